"""From the MTVCrafter sample's videos and pose files to a trained MV-DiT, both families: the
real-video latent build (tiny random VAE/CLIP/4DMoT sets) feeds `mvdit_trainer.train` from the
set's MV-DiT, the loss falls, and the trained run exports to a checkpoint the family loads."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_config
from test_video_latents import SAMPLE, config_for, sets  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not (SAMPLE / "sampled_data.pkl").is_file(),
                                reason=f"the MTVCrafter sample is not at {SAMPLE} (set "
                                "MTVJAX_SHARED_DATA to the folder holding mtvcrafter_sample)")

STEPS = 40
VARIANTS = {"cogvideox": "tiny", "wan": "tiny17b"}


def build_records(family, sets, output):  # noqa: F811
    from data_pipeline.latents import build
    config = config_for(family, sets, output, windows_per_clip=4, crops_per_window=2,
                        val_fraction=0.0)
    build(config)
    return output


def train_config(family, sets, dataset):  # noqa: F811
    from mtvjax.tools.random_checkpoints import TINY_IMAGE_DIM, TINY_TEXT_DIM
    config = load_config("mvdit.py", VARIANTS[family])
    config.data.source, config.data.path, config.data.batch_size = "shards", str(dataset), 4
    config.train.num_steps, config.train.log_every = STEPS, 1
    config.train.checkpoint_every, config.train.eval_batches = STEPS, 0
    config.train.init_from = sets[family]["mvdit"]
    config.optim.learning_rate, config.optim.warmup_steps = 1e-3, 0
    config.optim.trainable = "all"
    if family == "wan":
        config.model.text_dim, config.model.image_dim = TINY_TEXT_DIM, TINY_IMAGE_DIM
    return config


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_trains_on_real_video_records_and_exports(family, sets, tmp_path):  # noqa: F811
    from mtvjax.data.latent_shard_source import LatentShardSource
    from mtvjax.train.metric_writer import read_metrics
    from mtvjax.train.mvdit_export import export_run
    from mtvjax.train.mvdit_trainer import train

    dataset = build_records(family, sets, tmp_path / "latents")
    item = LatentShardSource(dataset)[0]
    assert item["latents_logvar"] is not None and item["motion_tokens"] is not None
    if family == "wan":
        assert item["image"] is not None and item["text"] is not None
        assert item["ref_latents"].shape == item["latents"].shape
    workdir = tmp_path / "run"
    state, _ = train(train_config(family, sets, dataset), str(workdir))
    losses = [m["loss"] for _, m in sorted(read_metrics(str(workdir)).items())]
    assert len(losses) == STEPS and np.all(np.isfinite(losses))
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"

    exported = tmp_path / "export"
    export_run(str(workdir / "checkpoints"), str(exported))
    if family == "cogvideox":
        from mtvjax.models.mvdit.cogvideox.convert import restore_mvdit7b
        _, _, params = restore_mvdit7b(str(exported))
    else:
        from mtvjax.models.mvdit.wan.convert import load_converted
        _, params = load_converted(str(exported))
    from flax import traverse_util
    import jax
    written = traverse_util.flatten_dict(jax.device_get(params))
    trained = traverse_util.flatten_dict(jax.device_get(state.params))
    assert set(written) == set(trained)
    for path, value in written.items():
        np.testing.assert_allclose(np.asarray(value), np.asarray(trained[path]), rtol=1e-6,
                                   atol=1e-7, err_msg="/".join(path))


def test_torch_pose_pickle_trains_tokenizes_and_builds_like_its_numpy_twin(sets, tmp_path):  # noqa: F811
    """The official extraction output (per-frame CUDA torch tensors) and the same joints as a
    numpy pickle give the same 4DMoT training losses (same process, same data), the same 4DMoT
    tokens and the same latent records."""
    pytest.importorskip("torch")
    import pickle

    import torch
    from data_pipeline.latents import build
    from mtvjax.data.latent_shard_source import LatentShardSource
    from mtvjax.data.safe_pickle import load_pickle
    from mtvjax.train.fourdmot_trainer import train as train_4dmot
    from mtvjax.train.metric_writer import read_metrics
    from fourdmot_runs import tiny_config
    from test_torch_pose_pickles import _dump_on_gpu

    item = load_pickle(str(SAMPLE / "sampled_data.pkl"))[0]
    pose = np.asarray(item["pose"], np.float32)
    meta = {"video_path": str(SAMPLE / item["video_path"]), "video_length": len(pose),
            "video_width": item["video_width"], "video_height": item["video_height"]}
    # one file name (the crops are seeded by the clip key, which names the file)
    files = {kind: tmp_path / kind / "poses.pkl" for kind in ("torch", "numpy")}
    for path in files.values():
        path.parent.mkdir()
    _dump_on_gpu({**meta, "pose": {"joints3d_nonparam": [torch.from_numpy(p[None])
                                                         for p in pose]}}, files["torch"])
    assert b"cuda:0" in files["torch"].read_bytes()
    with open(files["numpy"], "wb") as f:
        pickle.dump({**meta, "pose": pose}, f)

    losses, built = {}, {}
    for kind, path in files.items():
        run = tmp_path / f"4dmot_{kind}"
        train_4dmot(tiny_config(2, **{"data.source": "pkl", "data.path": str(path),
                                      "train.eval_batches": 0}), str(run))
        losses[kind] = [m["loss"] for _, m in sorted(read_metrics(str(run)).items())]
        out = tmp_path / f"latents_{kind}"
        build(config_for("cogvideox", sets, out, inputs=(str(path),), val_fraction=0.0,
                         windows_per_clip=2))
        source = LatentShardSource(out)
        built[kind] = [source[i] for i in range(len(source))]
    assert len(losses["torch"]) == 2 and losses["torch"] == losses["numpy"]
    assert len(built["torch"]) == len(built["numpy"]) == 2
    for a, b in zip(built["torch"], built["numpy"]):
        assert a["key"] == b["key"]
        np.testing.assert_array_equal(a["motion"], b["motion"])
        np.testing.assert_array_equal(a["motion_tokens"], b["motion_tokens"])
        np.testing.assert_allclose(a["latents"], b["latents"], rtol=1e-6, atol=1e-6)
