"""MV-DiT training: tiny 7B from latent shards, exact resume (in process and after SIGTERM),
condition dropout, the 17B trainable mask with pretrained init, non-finite steps, gradient
accumulation, and the frozen 4DMoT inside the step."""
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import REPO_ROOT, load_config, logged_losses, override
from data_pipeline import latents as latent_build
from mtvjax.checkpoint.manager import Checkpointer, config_to_json, read_config
from mtvjax.data.latent_batches import make_latent_batches
from mtvjax.data.latent_records import decode_latent_record, encode_latent_record
from mtvjax.data.latent_shard_source import LatentShardSource
from mtvjax.models.mvdit.wan import config as WC
from mtvjax.models.mvdit.wan import model as W
from mtvjax.train import mvdit_step as steps
from mtvjax.train import mvdit_trainer as T
from mtvjax.train.metric_writer import read_metrics

NUM_STEPS = 24
OVERRIDES = {
    "data.source": "shards", "data.batch_size": 8, "data.num_threads": 1,
    "train.num_steps": NUM_STEPS, "train.log_every": 1, "train.checkpoint_every": 8,
    "train.peak_flops_per_device": 1e10, "optim.learning_rate": 1e-3,
    "optim.warmup_steps": 4,
    # Adam's first steps divide by |g| + eps; eps 1e-6 keeps equalities that only hold up to
    # rounding (accumulation vs one batch) well conditioned.
    "optim.eps": 1e-6,
}


def _data_config(variant, output, **extra):
    config = load_config("data/synthetic_latents.py", variant)
    config.output = str(output)
    config.motion.synthetic_sequences = 24
    return override(config, extra)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "tiny"
    latent_build.build(_data_config("tiny", out))
    return out


def _config(shards, variant="tiny", **extra):
    config = load_config("mvdit.py", variant)
    config.data.path = str(shards)
    return override(config, {**OVERRIDES, **extra})


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state, _ = T.train(_config(shards), str(workdir))
    return workdir, jax.device_get(state)


def test_records_round_trip_and_reject_bad_fields(shards, tmp_path):
    source = LatentShardSource(shards)
    item = source[0]
    assert item["latents"].shape == (3, 8, 8, 16) and item["ref_latents"].shape == (1, 8, 8, 16)
    assert item["motion"].shape == (9, 24, 3) and item["motion_tokens"].shape == (72, 128)
    np.testing.assert_array_equal(item["ref_latents"][0], item["latents"][0])
    data = encode_latent_record(key="k", source_id="s", latents=item["latents"],
                                ref_latents=item["ref_latents"], motion=item["motion"],
                                latent_dtype="<f2")
    back = decode_latent_record(data)
    np.testing.assert_allclose(back["latents"], item["latents"], atol=2e-3)
    assert back["motion_tokens"] is None
    with pytest.raises(ValueError, match="motion must be"):
        encode_latent_record(key="k", source_id="s", latents=item["latents"],
                             ref_latents=item["ref_latents"], motion=item["motion"][:5])
    with pytest.raises(ValueError, match="schema"):
        decode_latent_record(b"\x81\xa6schema\x01")
    with pytest.raises(FileNotFoundError, match="not a built latent dataset"):
        LatentShardSource(shards / "train" / "missing")
    (tmp_path / "manifest.json").write_text('{"manifest_version": 1, "splits": {}}')
    with pytest.raises(ValueError, match="'motion' dataset, not MV-DiT latents"):
        LatentShardSource(tmp_path)


def test_tiny_trains_from_shards(uninterrupted):
    workdir, state = uninterrupted
    rows = read_metrics(str(workdir))
    assert sorted(rows) == list(range(1, NUM_STEPS + 1))
    losses = np.array([rows[s]["loss"] for s in sorted(rows)])
    assert losses[-6:].mean() < 0.7 * losses[:3].mean(), losses
    for key in ("loss", "grad_norm", "lr", "step_time", "samples_per_s", "mfu", "skipped_steps"):
        assert np.isfinite(rows[NUM_STEPS][key]), key
    assert rows[NUM_STEPS]["lr"] == pytest.approx(1e-3)
    assert rows[1]["lr"] == 0.0                             # warm-up starts at 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    config, step = read_config(str(workdir / "checkpoints"))
    assert step == NUM_STEPS
    assert config["model"]["uncond_motion_shape"] == [72, 128]   # fitted to the data
    assert config["model"]["joint_positions_path"].endswith("mean.npy")
    assert int(state.step) == NUM_STEPS and int(state.skipped_steps) == 0


def test_resume_reproduces_the_uninterrupted_run(uninterrupted, shards, tmp_path):
    reference, final = uninterrupted
    T.train(_config(shards, **{"train.stop_after_steps": 10}), str(tmp_path))
    assert set(logged_losses(tmp_path)) == set(range(1, 11))
    state, _ = T.train(_config(shards), str(tmp_path))
    assert logged_losses(tmp_path) == logged_losses(reference)
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(final.params)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_checkpoints_then_resumes(uninterrupted, shards, tmp_path):
    """`mtvjax train` (the CLI dispatches on config.model.family) stops with status 143 on
    SIGTERM after saving a checkpoint; rerunning finishes with the uninterrupted losses."""
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + [f"--config.data.path={shards}"]
    cmd = [sys.executable, "-m", "mtvjax.cli", "train", "--config",
           f"{REPO_ROOT / 'configs' / 'mvdit.py'}:tiny", "--workdir", str(tmp_path)] + flags
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-2000:] + err[-3000:]
    stopped = max(logged_losses(tmp_path))
    assert stopped < NUM_STEPS and "SIGTERM: checkpointed step" in out
    assert Checkpointer(str(tmp_path / "checkpoints")).latest_step() == stopped
    T.train(_config(shards), str(tmp_path))
    assert logged_losses(tmp_path) == logged_losses(uninterrupted[0])


@pytest.fixture(scope="module")
def tiny_trainer(shards):
    """A tiny 7B trainer on one device with its fitted config, initial state and a batch."""
    config = _config(shards)
    source = T.make_source(config)
    config, _ = T.fit_config(config, source[0])
    trainer = T.MVDiTTrainer(config, jax.devices()[:1])
    local = make_latent_batches(source, 8, 0)[0]
    return config, trainer, jax.device_get(trainer.init_state()), local


def _place(trainer, state):
    """`state` on the trainer's mesh with its shardings (the compiled step's input layout)."""
    if trainer.state_shardings is None:
        trainer.abstract_state()
    return jax.device_put(state, trainer.state_shardings)


def test_nonfinite_step_is_skipped_and_counted(tiny_trainer):
    _, trainer, init, local = tiny_trainer
    bad = dict(local, latents=local["latents"].copy())
    bad["latents"][3, 1, 2, 2, 5] = np.nan
    state, metrics = trainer.step(_place(trainer, init), trainer.device_batch(bad))
    assert int(metrics["nonfinite"]) == 1 and int(state.skipped_steps) == 1
    assert int(state.step) == 1
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(init.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(jax.device_get(state.opt_state)),
                    jax.tree.leaves(init.opt_state)):
        np.testing.assert_array_equal(a, b)
    state, metrics = trainer.step(state, trainer.device_batch(local))
    assert int(metrics["nonfinite"]) == 0 and int(state.skipped_steps) == 1


def test_gradient_accumulation_equals_one_concatenated_batch(tiny_trainer):
    config, trainer, init, local = tiny_trainer
    accumulated = config.copy_and_resolve_references()
    accumulated.optim.grad_accum_steps = 2
    trainer2 = T.MVDiTTrainer(accumulated, jax.devices()[:1])
    s1, m1 = trainer.step(_place(trainer, init), trainer.device_batch(local))
    s2, m2 = trainer2.step(_place(trainer2, init), trainer2.device_batch(local))
    assert trainer2.device_batch(local)["latents"].shape[:2] == (2, 4)
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.device_get(s2.params)),
                    jax.tree.leaves(jax.device_get(s1.params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_condition_dropout_swaps_in_the_unconditional_tokens(tiny_trainer):
    """The train step's loss (motion dropout p 0.2) equals the dropout-free loss of the same
    noise with the dropped samples' tokens replaced by the unconditional tokens by hand."""
    config, trainer, init, local = tiny_trainer
    batch = trainer.device_batch(local)
    # attn0's output projection starts at zero (motion has no effect yet): give it weights
    flat = traverse_util.flatten_dict(init.params)
    out = ("blocks", "block_0", "attn0", "to_out", "kernel")
    flat[out] = 0.1 * np.random.default_rng(0).normal(size=flat[out].shape).astype(np.float32)
    params = traverse_util.unflatten_dict(flat)
    state = _place(trainer, init.replace(params=params))
    key = jax.random.fold_in(init.rng, 0)                  # the step key of step 0

    draw = steps.make_draw(steps.make_schedule(config))
    flags = jax.jit(lambda k, i, p: draw(k, i, jnp.zeros(i.shape + (1, 1, 1, 1)), p, 0.1)[3],
                    static_argnums=2)
    dropped = np.asarray(flags(key, batch["sample_index"][0], 0.2))
    _, metrics = trainer.step(state, batch)
    assert 0 < dropped.sum() < len(dropped)              # this batch drops some samples
    assert float(metrics["motion_dropped"]) == dropped.mean()

    clean = jax.jit(steps.make_eval_step(config, trainer.model))
    uncond = np.asarray(params["unconditional_motion_token"])
    tokens = np.array(batch["motion_tokens"])
    tokens[0, dropped] = uncond
    swapped = dict(batch, motion_tokens=jnp.asarray(tokens))
    np.testing.assert_allclose(float(metrics["loss"]), float(clean(params, swapped, key)),
                               rtol=1e-5)
    assert abs(float(metrics["loss"]) - float(clean(params, batch, key))) > 1e-4

    # The draws are a pure function of (key, sample index): reproducible, ~p, per sample.
    a = np.asarray(flags(key, jnp.arange(512), 0.2))
    np.testing.assert_array_equal(a, np.asarray(flags(key, jnp.arange(512), 0.2)))
    assert 0.14 < a.mean() < 0.26
    np.testing.assert_array_equal(np.asarray(flags(key, jnp.arange(1, 513), 0.2))[:-1], a[1:])


def test_17b_trains_only_the_motion_modules_from_pretrained(tmp_path):
    """tiny17b from a converted-style params checkpoint: Wan parameters stay bit-identical,
    motion attention and the (new, fitted) unconditional tokens train; text comes from the
    records and is dropped with p 0.1."""
    shards = tmp_path / "latents17b"
    latent_build.build(_data_config("tiny17b", shards))
    config = _config(shards, "tiny17b", **{"train.num_steps": 3, "train.checkpoint_every": 3})
    config.model.text_len = 8
    config.model.num_layers = 4
    # "pretrained" weights for the unfitted model (no unconditional tokens): random values of
    # the shapes `jax.eval_shape` gives, so nothing compiles
    shapes = W.param_shapes(WC.wan_config(config))
    rng = np.random.default_rng(7)
    pretrained = jax.tree.map(lambda x: (0.02 * rng.normal(size=x.shape)).astype(np.float32),
                              shapes)
    saver = Checkpointer(str(tmp_path / "pretrained"), keep=None)
    saver.save(0, {"params": pretrained}, None, config_to_json(config), force=True)
    saver.wait()
    saver.close()
    config.train.init_from = str(tmp_path / "pretrained")
    state, _ = T.train(config, str(tmp_path / "run"))
    final = traverse_util.flatten_dict(jax.device_get(state.params))
    stored = traverse_util.flatten_dict(pretrained)
    assert ("uncond_motion_tokens",) in final and ("uncond_motion_tokens",) not in stored
    moved = []
    for path, value in final.items():
        if path not in stored:
            continue
        if steps.trainable_predicate(config)(path):
            moved.append(not np.array_equal(value, stored[path]))
        else:
            np.testing.assert_array_equal(value, stored[path], err_msg="/".join(path))
    assert moved and all(moved)
    opt_leaves = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.opt_state))
    trainable = sum(int(np.prod(v.shape)) for k, v in final.items()
                    if steps.trainable_predicate(config)(k))
    assert opt_leaves < 2 * trainable + 10                  # AdamW moments of trained params only
    rows = read_metrics(str(tmp_path / "run"))
    assert np.isfinite(rows[3]["loss"])


def test_frozen_4dmot_inside_the_step_equals_precomputed_tokens(tiny_trainer, tmp_path):
    """A 4DMoT checkpoint (code_dim 128 = the tiny 7B's width) tokenises the records' motion
    in the data pipeline and inside the step: same tokens, same loss."""
    from mtvjax.models.fourdmot.build import build_model
    from mtvjax.train import fourdmot_step as F
    config, trainer, init, _ = tiny_trainer
    tok_config = load_config("4dmot.py", "tiny")
    tok_config.model.code_dim = 128
    model = build_model(tok_config.model)
    tx = F.make_optimizer(tok_config)
    # random weights of the abstract state's shapes (nothing compiles); codebook N(0, 1)
    rng = np.random.default_rng(0)
    tok_state = jax.tree.map(
        lambda x: ((0.1 * rng.normal(size=x.shape)) if jnp.issubdtype(x.dtype, jnp.floating)
                   else np.zeros(x.shape)).astype(x.dtype),
        F.abstract_state(tok_config, model, tx))
    tok_state = tok_state.replace(
        stats={"mean": np.zeros((24, 3), np.float32) + [0, 0, 3000],
               "std": np.full((24, 3), 300.0, np.float32)},
        quantizer=dict(tok_state.quantizer, codebook=10 * tok_state.quantizer["codebook"]))
    saver = Checkpointer(str(tmp_path / "4dmot"), keep=None)
    saver.save(0, tok_state, None, config_to_json(tok_config), force=True)
    saver.wait()
    saver.close()

    shards = tmp_path / "tokenized"
    latent_build.build(_data_config("tiny", shards, **{
        "tokens.kind": "tokenizer", "tokens.tokenizer_checkpoint": str(tmp_path / "4dmot"),
        "motion.synthetic_sequences": 12}))
    source = LatentShardSource(shards)
    local = make_latent_batches(source, 8, 0)[0]
    assert float(np.abs(local["motion_tokens"]).max()) > 0

    with_tokens = trainer.device_batch(local)
    key = jax.random.PRNGKey(5)
    clean = jax.jit(steps.make_eval_step(config, trainer.model))
    want = float(clean(init.params, with_tokens, key))

    tok_run = config.copy_and_resolve_references()
    tok_run.motion.tokens = "tokenizer"
    tok_run.motion.tokenizer_checkpoint = str(tmp_path / "4dmot")
    tok_trainer = T.MVDiTTrainer(tok_run, jax.devices()[:1], has_tokens=True)
    without = tok_trainer.device_batch(local)
    assert "motion_tokens" not in without and "motion" in without
    got = float(jax.jit(steps.make_eval_step(tok_run, tok_trainer.model, tok_trainer.tokenizer))(
        init.params, without, key, tok_trainer.frozen))
    np.testing.assert_allclose(got, want, rtol=1e-5)
