"""The real-video latent build (`data_pipeline.video_latents`, `latents.renderer="vae"`) on the
MTVCrafter sample with tiny random checkpoints: records equal the conditioning functions applied
to independently decoded frames, bad inputs are listed and skipped, parts are reused and merge
to the union, and a failure leaves no half-written output."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from conftest import SHARED_DATA, load_config, simulated_devices_env

SAMPLE = SHARED_DATA / "mtvcrafter_sample"
pytestmark = pytest.mark.skipif(not (SAMPLE / "sampled_data.pkl").is_file(),
                                reason=f"the MTVCrafter sample is not at {SAMPLE} (set "
                                "MTVJAX_SHARED_DATA to the folder holding mtvcrafter_sample)")

CAPTION = "a woman dancing on the beach"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Tiny random checkpoint sets of both families (9-frame windows)."""
    from mtvjax.tools.random_checkpoints import TINY_TEXT_DIM, write_set
    root = tmp_path_factory.mktemp("sets")
    out = {"cogvideox": write_set(str(root / "7b"), "cogvideox", window=9),
           "wan": write_set(str(root / "17b"), "wan", window=9, text_encoder=False)}
    rng = np.random.default_rng(3)
    prompts = {CAPTION: 4, "The character is dancing.": 5, "bad hands, extra limbs, fused "
               "fingers, blurry, low quality": 7}
    out["embeddings"] = {p: rng.normal(size=(n, TINY_TEXT_DIM)).astype(np.float32)
                         for p, n in prompts.items()}
    np.savez(root / "captions.npz", **out["embeddings"])
    (root / "captions.json").write_text(json.dumps({"sampled_data.pkl#1": CAPTION}))
    out["root"] = root
    return out


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Pose files with a missing video, NaN poses, and a video_length the video does not have."""
    from mtvjax.data.safe_pickle import load_pickle
    root = tmp_path_factory.mktemp("bad")
    item = load_pickle(str(SAMPLE / "sampled_data.pkl"))[0]
    video = str(SAMPLE / item["video_path"])
    pose = np.asarray(item["pose"], np.float32)
    nan = pose.copy()
    nan[3, 5] = np.nan
    files = {"missing.pkl": {"video_path": "videos/not_there.mp4", "pose": pose,
                             "video_length": len(pose)},
             "nan.pkl": {"video_path": video, "pose": nan, "video_length": len(pose)},
             "length.pkl": {"video_path": video, "pose": pose, "video_length": len(pose) + 5}}
    for name, data in files.items():
        with open(root / name, "wb") as f:
            pickle.dump([data], f)
    return [str(root / n) for n in files]


def config_for(family: str, sets, output, **overrides):
    c = load_config("data/real_videos.py", "tiny7b" if family == "cogvideox" else "tiny17b")
    paths = sets[family]
    c.checkpoints.vae = paths["vae"]
    c.checkpoints.tokenizer = paths["tokenizer"]
    if family == "wan":
        c.checkpoints.clip = paths["clip"]
        c.captions.path = str(sets["root"] / "captions.json")
        c.captions.embeddings = str(sets["root"] / "captions.npz")
    c.output = str(output)
    for key, value in overrides.items():
        c[key] = value
    return c


def records(path, split):
    from mtvjax.data.latent_shard_source import LatentShardSource
    source = LatentShardSource(path, split)
    return {source[i]["key"]: source[i] for i in range(len(source))}


def window_pixels(entry):
    """The record's frames decoded and cropped here, independently of the build, in [−1, 1]."""
    from data_pipeline.readers.video import cover_size, decode_frames, video_info
    info = video_info(entry["video_path"])
    top, left, h, w = entry["crop"]
    first, end = entry["video_frames"]
    frames = decode_frames(entry["video_path"], np.arange(first, end),
                           cover_size(info.height, info.width, (h, w)), (top, left, h, w))
    return frames.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def built7b(sets, bad_inputs, tmp_path_factory):
    from data_pipeline import latents
    out = tmp_path_factory.mktemp("out7b") / "ds"
    config = config_for("cogvideox", sets, out,
                        inputs=(str(SAMPLE / "sampled_data.pkl"), *bad_inputs))
    manifest = latents.build(config)
    return config, manifest


def test_7b_records_are_the_posterior_and_reference_of_the_decoded_window(sets, built7b):
    from mtvjax.models.mvdit.cogvideox.reference import reference_latents
    from mtvjax.models.vae.cogvideox.convert import restore_vae_cogvideox
    from data_pipeline.video_latents import reference_key
    config, manifest = built7b
    assert manifest["counts"]["clips"] == 3 and manifest["splits"]["val"]["records"] == 1
    _, vae, params = restore_vae_cogvideox(sets["cogvideox"]["vae"])
    for split in ("train", "val"):
        got = records(config.output, split)
        for entry in manifest["index"][split]:
            rec = got[entry["key"]]
            pixels = window_pixels(entry)
            mean, logvar = vae.encode_posterior(params, pixels[None], tiling=False)
            np.testing.assert_allclose(rec["latents"], mean[0], atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(rec["latents_logvar"], logvar[0], atol=1e-4, rtol=1e-4)
            ref = reference_latents(vae, params, pixels[0], 9, reference_key(config.seed,
                                                                              entry["key"]))
            np.testing.assert_allclose(rec["ref_latents"], ref[0], atol=1e-4, rtol=1e-4)
            assert rec["motion_tokens"].shape[0] == rec["latents"].shape[0] * 24
            assert rec["text"] is None and rec["image"] is None
            np.testing.assert_array_equal(rec["first_joints"], rec["motion"][0])


def test_bad_inputs_are_listed_with_their_reason_and_skipped(built7b):
    _, manifest = built7b
    errors = {os.path.basename(e["path"]): e["message"] for e in manifest["errors"]}
    assert "missing video" in errors["not_there.mp4"]
    assert "NaN" in errors["nan.pkl"]
    assert "pose/video length mismatch" in errors["clip_00001.mp4"]
    keys = {e["clip"] for split in manifest["index"].values() for e in split}
    assert keys == {"sampled_data.pkl#0", "sampled_data.pkl#1", "sampled_data.pkl#2"}


def test_17b_records_are_the_posterior_image_condition_clip_and_caption(sets, tmp_path):
    from mtvjax.models.encoders.load import load_clip_vision
    from mtvjax.models.mvdit.wan.reference import clip_features, image_condition
    from mtvjax.models.vae.wan import model as vae_wan
    from mtvjax.models.vae.wan.convert import load_converted
    from data_pipeline import latents
    config = config_for("wan", sets, tmp_path / "ds")
    manifest = latents.build(config)
    vae_config, vae_params = load_converted(sets["wan"]["vae"])
    clip_config, clip_params = load_clip_vision(sets["wan"]["clip"])
    texts = sets["embeddings"]
    for split in ("train", "val"):
        got = records(config.output, split)
        for entry in manifest["index"][split]:
            rec = got[entry["key"]]
            pixels = window_pixels(entry)
            mean, logvar = vae_wan.encode_posterior(vae_params, pixels[None], vae_config)
            np.testing.assert_allclose(rec["latents"], mean[0], atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(rec["latents_logvar"], logvar[0], atol=1e-4, rtol=1e-4)
            y, _ = image_condition(vae_params, vae_config, pixels[:1], 9)
            np.testing.assert_allclose(rec["ref_latents"], y[0, ..., 4:], atol=1e-4, rtol=1e-4)
            image = clip_features(clip_params, clip_config, pixels[0])
            np.testing.assert_allclose(rec["image"], image[0], atol=1e-4, rtol=1e-4)
            caption = CAPTION if entry["clip"] == "sampled_data.pkl#1" else config.captions.default_prompt
            np.testing.assert_allclose(rec["text"], texts[caption], atol=1e-6)
    assert manifest["text"]["negative_prompt"] == config.captions.negative_prompt


def test_parts_are_reused_and_two_processes_merge_to_the_union(sets, built7b, tmp_path):
    from data_pipeline import video_latents as VL
    single_config, single = built7b
    config = config_for("cogvideox", sets, tmp_path / "ds", inputs=single_config.inputs)
    first = VL.build(config, process=(1, 2), progress=False)
    assert first["missing"] == ["part-00000-of-00002"]
    part = VL.part_folder(config, 1, 2) / VL.PART_INFO
    written = part.stat().st_mtime_ns
    again = VL.build(config, process=(1, 2), progress=False)
    assert again["part"].get("reused") and part.stat().st_mtime_ns == written
    other = config_for("cogvideox", sets, tmp_path / "ds", inputs=config.inputs, seed=1)
    assert VL.finished_parts(other)[0] == []          # parts of other settings do not count
    manifest = VL.build(config, process=(0, 2), progress=False)   # process 0 merges
    assert manifest["counts"]["parts"] == 2 and not VL.parts_folder(config).exists()
    for split in ("train", "val"):
        want, got = records(single_config.output, split), records(config.output, split)
        assert sorted(got) == sorted(want)
        for key, rec in want.items():
            np.testing.assert_allclose(got[key]["latents"], rec["latents"], atol=1e-5)
    assert sorted(map(json.dumps, manifest["errors"])) == sorted(map(json.dumps, single["errors"]))
    np.testing.assert_allclose(np.load(os.path.join(config.output, "mean.npy")),
                               np.load(os.path.join(single_config.output, "mean.npy")), atol=1e-3)


def test_a_failed_build_leaves_no_half_written_output(sets, built7b, tmp_path, monkeypatch):
    from data_pipeline import video_latents as VL
    config = config_for("cogvideox", sets, tmp_path / "ds", inputs=built7b[0].inputs[:1])
    calls = []

    def failing(self, windows):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("encoder died")
        return original(self, windows)

    original = VL.FamilyEncoders.posteriors
    monkeypatch.setattr(VL.FamilyEncoders, "posteriors", failing)
    with pytest.raises(RuntimeError, match="encoder died"):
        VL.build(config, process=(0, 1), progress=False)
    assert sorted(os.listdir(tmp_path)) == []


def test_windows_encode_data_parallel_over_local_devices(sets, tmp_path):
    """Three simulated devices (a fresh process: the device count is fixed at start-up) encode
    the windows in groups of three, the last one padded; every record equals the one-device
    build's. The VAE treats batch entries independently, so the two builds compute the same
    values per window, up to the kernels' rounding."""
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from data_pipeline import latents
    options = dict(windows_per_clip=2, crops_per_window=2)
    one = tmp_path / "one"
    latents.build(config_for("cogvideox", sets, one, **options))
    three = tmp_path / "three"
    script = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import jax; assert jax.local_device_count() == 3\n"
        "from data_pipeline import latents\n"
        "from test_video_latents import config_for\n"
        f"sets = {{'cogvideox': {dict(sets['cogvideox'])!r}}}\n"
        f"latents.build(config_for('cogvideox', sets, {str(three)!r}, **{options!r}))\n")
    env = simulated_devices_env(3, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for split in ("train", "val"):
        want, got = records(one, split), records(three, split)
        assert sorted(want) == sorted(got) and len(want) >= 4
        for key, rec in want.items():
            for name in ("latents", "latents_logvar", "ref_latents"):
                np.testing.assert_allclose(got[key][name], rec[name], atol=1e-5, rtol=1e-5,
                                           err_msg=f"{key} {name}")


def test_each_clip_video_is_decoded_once_for_all_its_windows(sets, tmp_path, monkeypatch):
    """Two windows × two crops per clip: one decoding pass per clip, records as the
    independently decoded frames."""
    from data_pipeline import latents, video_windows
    passes = []
    original = video_windows.iter_frames

    def counting(path, *args, **kwargs):
        passes.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(video_windows, "iter_frames", counting)
    out = tmp_path / "ds"
    manifest = latents.build(config_for("cogvideox", sets, out, windows_per_clip=2,
                                        crops_per_window=2))
    assert manifest["counts"]["clips"] == 3 and len(passes) == 3 and len(set(passes)) == 3
    entries = {e["key"]: e for split in manifest["index"].values() for e in split}
    got = records(out, "train")
    assert len(got) >= 4
    from data_pipeline.video_encoders import FamilyEncoders
    encoders = FamilyEncoders(config_for("cogvideox", sets, out))
    for key, rec in list(got.items())[:2]:
        (mean, _), = encoders.posteriors([window_pixels(entries[key])])
        np.testing.assert_allclose(rec["latents"], mean, atol=1e-4, rtol=1e-4)
