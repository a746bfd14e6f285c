"""LoRA training (`optim.trainable="lora"`) and `mtvjax export`: adapter shapes on both families'
real parameter paths, only adapters train (the base stays bit-identical), step 0 is the base
model's loss, the adapters file, the merged export (against numpy) restoring through each
family's converted-checkpoint loader, exact resume, the export of a plain run and its
destination rules."""
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import REPO_ROOT, load_config, logged_losses, override
from mtvjax.models.mvdit import registry
from mtvjax.models.mvdit.cogvideox.convert import restore_mvdit7b
from mtvjax.models.mvdit.wan.convert import load_converted
from mtvjax.train import lora
from mtvjax.train import mvdit_trainer as T
from mtvjax.train.metric_writer import read_metrics
from mtvjax.train.mvdit_export import ExportError, export_run

STEPS = 2
RUN = {"data.batch_size": 2, "data.num_threads": 1, "data.synthetic_windows": 4,
       "train.num_steps": STEPS, "train.log_every": 1, "train.checkpoint_every": STEPS,
       "train.peak_flops_per_device": 1e10, "optim.warmup_steps": 0,
       "optim.learning_rate": 1e-2}


def _config(variant, trainable, steps=STEPS, **extra):
    config = override(load_config("mvdit.py", variant),
                      {**RUN, "train.num_steps": steps, "train.checkpoint_every": steps, **extra})
    config.optim.trainable = trainable
    config.optim.lora.rank = 4
    config.optim.lora.alpha = 8.0
    return config


def _train(config, workdir):
    state, _ = T.train(config, str(workdir))
    return jax.device_get(state)


@pytest.fixture(scope="module")
def runs_7b(tmp_path_factory):
    """tiny 7B: a LoRA run of 2 steps (checkpointed at both) and a full run of 1 step from the
    same init."""
    lora_dir, all_dir = tmp_path_factory.mktemp("lora7b"), tmp_path_factory.mktemp("all7b")
    return (lora_dir, _train(_config("tiny", "lora", **{"train.checkpoint_every": 1}), lora_dir),
            all_dir, _train(_config("tiny", "all", steps=1), all_dir))


def _flat(tree):
    return traverse_util.flatten_dict(tree)


def _expected_merge(params, scale):
    """numpy W + scale·A@B for each adapter of a LoRA state's params (module rule)."""
    flat = {k: np.asarray(v, np.float64) for k, v in _flat(params).items() if k[0] != lora.KEY}
    adapters = _flat(params[lora.KEY])
    for path in {k[:-1] for k in adapters}:
        a, b, w = adapters[path + ("a",)], adapters[path + ("b",)], flat[path]
        s = a.ndim + b.ndim - w.ndim - 2
        lead = int(np.prod(a.shape[:s], dtype=np.int64))
        a2 = np.asarray(a, np.float64).reshape(lead, -1, a.shape[-1])
        b2 = np.asarray(b, np.float64).reshape(lead, b.shape[s], -1)
        flat[path] = w + scale * np.einsum("lir,lro->lio", a2, b2).reshape(w.shape)
    return flat, {k[:-1] for k in adapters}


def test_adapter_shapes_follow_the_split_rule():
    """Default targets on the real parameter paths: stacked layer axes kept, DenseGeneral
    kernels split in/out at the head axes, image keys / FFN / modulation untouched."""
    shapes = {}
    for variant in ("tiny", "tiny17b"):
        config = load_config("mvdit.py", variant)
        config.optim.lora.rank = 4
        fam = registry.of(config)
        abstract = lora.abstract_adapters(fam.abstract_params(config), fam.logical_axes(config),
                                          config.optim.lora)
        shapes[variant] = {"/".join(k): v.shape for k, v in _flat(abstract).items()}
    seven = shapes["tiny"]
    assert len(seven) == 2 * 8                               # attn0/attn1 × q, k, v, out
    assert seven["blocks/block_0/attn1/to_q/kernel/a"] == (2, 128, 4)
    assert seven["blocks/block_0/attn1/to_q/kernel/b"] == (2, 4, 128)
    assert seven["blocks/block_0/attn0/to_out/kernel/b"] == (2, 4, 128)
    wan = shapes["tiny17b"]
    assert wan["blocks/plain/self_attn/q/kernel/a"] == (1, 3, 256, 4)
    assert wan["blocks/plain/self_attn/q/kernel/b"] == (1, 3, 4, 2, 128)
    assert wan["blocks/plain/cross_attn/o/kernel/a"] == (1, 3, 2, 128, 4)
    assert wan["blocks/plain/cross_attn/o/kernel/b"] == (1, 3, 4, 256)
    assert wan["tail/motion_block/motion_attn/v/kernel/a"] == (256, 4)
    assert wan["tail/motion_block/motion_attn/o/kernel/a"] == (2, 128, 4)
    assert not any("k_img" in k or "ffn" in k or "modulation" in k for k in wan)
    # blocks/ and tail/ motion blocks: self, cross, motion × (q, k, v, o); plain: self, cross
    assert len(wan) == 2 * (12 + 12 + 8)
    config = load_config("mvdit.py", "tiny")
    config.optim.lora.targets = (r"norm_q/scale$",)
    with pytest.raises(ValueError, match="not a matrix"):
        lora.abstract_adapters(registry.of(config).abstract_params(config),
                               registry.of(config).logical_axes(config), config.optim.lora)


def test_lora_trains_only_the_adapters(runs_7b):
    lora_dir, state, all_dir, _ = runs_7b
    config = _config("tiny", "all")
    config, _ = T.fit_config(config, T.make_source(config)[0])
    init = jax.device_get(T.MVDiTTrainer(config, jax.devices()[:1]).init_state())
    # the base of the LoRA run is the plain init (same seed), bit-identical after the steps
    base = {k: v for k, v in _flat(state.params).items() if k[0] != lora.KEY}
    assert base.keys() == _flat(init.params).keys()
    for k, v in _flat(init.params).items():
        np.testing.assert_array_equal(base[k], v, err_msg="/".join(k))
    adapters = _flat(state.params[lora.KEY])
    assert adapters and all(np.abs(v).max() > 0 for k, v in adapters.items() if k[-1] == "b")
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x)]   # Adam's mu, nu
    assert sum(x.size for x in moments) == 2 * sum(v.size for v in adapters.values())
    # B = 0 at step 0: the first step's loss is the full run's first loss
    first_lora, first_all = read_metrics(str(lora_dir))[1], read_metrics(str(all_dir))[1]
    np.testing.assert_allclose(first_lora["loss"], first_all["loss"], rtol=1e-5)
    saved, metadata = lora.load_adapters(lora_dir / lora.FILE_NAME)
    assert metadata["step"] == STEPS and metadata["rank"] == 4 and metadata["alpha"] == 8.0
    for k, v in _flat(saved).items():
        np.testing.assert_array_equal(v, adapters[k])


def test_lora_run_resumes_exactly(runs_7b, tmp_path):
    lora_dir, state, _, _ = runs_7b
    _train(_config("tiny", "lora", **{"train.stop_after_steps": 1}), tmp_path)
    resumed = _train(_config("tiny", "lora"), tmp_path)
    assert logged_losses(tmp_path) == logged_losses(lora_dir)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_export_merges_the_adapters_into_the_7b(runs_7b, tmp_path):
    lora_dir, state, _, _ = runs_7b
    summary = export_run(str(lora_dir / "checkpoints"), str(tmp_path / "out"))
    assert summary["lora"]["kernels"] == 8 and summary["step"] == STEPS
    config, _, params = restore_mvdit7b(tmp_path / "out")
    assert config.conversion.lora.rank == 4
    expected, targets = _expected_merge(state.params, 8.0 / 4)
    got = _flat(jax.device_get(params))
    assert got.keys() == expected.keys() and len(targets) == 8
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg="/".join(k))
    assert any(np.abs(got[k] - _flat(state.params)[k]).max() > 1e-6 for k in targets)
    # an earlier export is replaced; a folder with anything else is refused, nothing deleted
    export_run(str(lora_dir / "checkpoints"), str(tmp_path / "out"), step=STEPS)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_run(str(lora_dir / "checkpoints"), str(tmp_path / "user"))
    assert (tmp_path / "user" / "notes.txt").read_text() == "mine"


def test_export_command_writes_a_plain_runs_params(runs_7b, tmp_path):
    _, _, all_dir, state = runs_7b
    cmd = [sys.executable, "-m", "mtvjax.cli", "export", "--workdir", str(all_dir)]
    done = subprocess.run(cmd + ["--dst", str(tmp_path / "out")], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no LoRA" in done.stdout
    _, _, params = restore_mvdit7b(tmp_path / "out")
    got = _flat(jax.device_get(params))
    assert got.keys() == _flat(state.params).keys()
    for k, v in _flat(state.params).items():
        np.testing.assert_array_equal(got[k], v, err_msg="/".join(k))
    (tmp_path / "taken").write_text("x")
    refused = subprocess.run(cmd + ["--dst", str(tmp_path / "taken")], capture_output=True,
                             text=True, cwd=REPO_ROOT)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"mtvjax export: {tmp_path / 'taken'}: is a file, not a folder; choose another --dst"]


def test_17b_lora_run_exports_through_the_wan_loader(tmp_path):
    workdir = tmp_path / "run"
    state = _train(_config("tiny17b", "lora"), workdir)
    assert all(np.abs(v).max() > 0 for k, v in _flat(state.params[lora.KEY]).items()
               if k[-1] == "b")
    export_run(str(workdir / "checkpoints"), str(tmp_path / "out"))
    model_config, params = load_converted(tmp_path / "out")
    assert model_config.num_layers == load_config("mvdit.py", "tiny17b").model.num_layers
    expected, targets = _expected_merge(state.params, 8.0 / 4)
    got = _flat(params)
    assert got.keys() == expected.keys() and ("tail", "motion_block", "motion_attn", "o",
                                              "kernel") in targets
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg="/".join(k))
