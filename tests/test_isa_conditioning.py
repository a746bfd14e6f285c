"""Interspatial attention as the MV-DiT motion conditioning (`model.conditioning="isa"`), both
families: config round trips, forward shapes, zero-initialised ISA = the base DiT, dependence on
the motion and the per-example drop flag, one train step (only ISA params move with
`optim.trainable="motion"`), guided sampling, and the default path's unchanged parameter tree."""
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import load_config
from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit.cogvideox import model as mv
from mtvjax.models.mvdit.wan import config as WC
from mtvjax.models.mvdit.wan import model as W
from mtvjax.models.mvdit.camera import Camera
from mtvjax.models.mvdit.isa import isa_config
from mtvjax.sample import mvdit_generate as gen
from mtvjax.tools.random_checkpoints import random_like
from mtvjax.train import mvdit_step as steps

B, F, H, WD = 2, 2, 4, 4
T = 4 * (F - 1) + 1


def _motion(seed):
    rng = np.random.default_rng(seed)
    mm = rng.normal(size=(B, T, 24, 3)) * 300.0 + np.array([0.0, 0.0, 3000.0])
    return jnp.asarray(mm, jnp.float32)


def _isa_paths(params):
    return [k for k in traverse_util.flatten_dict(params) if ISA.is_isa_path(k)]


def _without_isa(params):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not ISA.is_isa_path(k)})


def _config(variant, **isa):
    config = load_config("mvdit.py", variant)
    config.model.conditioning = "isa"
    config.model.isa.update(isa)
    return config


def _check_motion_and_drop_flag(apply, p, atol, tol):
    """`apply(p, motion_mm, drop)` depends on the motion of each example whose drop flag is off.

    `atol`: tolerance of outputs that must not depend on the motion; `tol` (rtol and atol):
    of a conditioned example against the same example in an all-conditioned batch. Returns the
    output of `_motion(0)` with sample 0 dropped and sample 1 conditioned.
    """
    keep, mixed, none = (jnp.array(d) for d in ([False, False], [True, False], [True, True]))
    a, b = apply(p, _motion(0), keep), apply(p, _motion(1), keep)
    assert np.all(np.isfinite(a))
    assert float(jnp.abs(a - b)[0].max()) > 1e-3 and float(jnp.abs(a - b)[1].max()) > 1e-3
    # all points dropped: the motion no longer matters
    np.testing.assert_allclose(apply(p, _motion(0), none), apply(p, _motion(1), none), atol=atol)
    # per example: sample 0 dropped, sample 1 conditioned
    m0, m1 = apply(p, _motion(0), mixed), apply(p, _motion(1), mixed)
    np.testing.assert_allclose(m0[0], m1[0], atol=atol)
    np.testing.assert_allclose(m0[1], a[1], rtol=tol, atol=tol)
    assert float(jnp.abs(m0[0] - a[0]).max()) > 1e-3
    return m0


# ----------------------------------------------------------------------------------------------
# 7B family
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def m7():
    config = _config("tiny", every=1)
    model = mv.from_config(config)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, F, H, WD, 16)), jnp.float32)
    ref = jnp.asarray(np.random.default_rng(1).normal(size=(B, F, H, WD, 16)), jnp.float32)
    ts = jnp.array([300, 700])
    init = jax.jit(lambda key: nn.meta.unbox(model.init(key, x, ref, ts, motion_mm=_motion(0)))
                   ["params"])
    params0 = init(jax.random.PRNGKey(0))            # zero-initialised ISA outputs
    params_r = jax.tree.map(jnp.asarray, random_like(params0, 3))  # everything non-zero
    apply = jax.jit(lambda p, mm, drop: model.apply({"params": p}, x, ref, ts, motion_mm=mm,
                                                    motion_drop=drop))
    return dict(config=config, model=model, x=x, ref=ref, ts=ts, params0=params0,
                params_r=params_r, apply=apply)


def test_7b_default_conditioning_has_no_isa_params():
    config = load_config("mvdit.py", "tiny")
    assert config.model.conditioning == "motion_attention"
    assert config.model.isa.to_dict() == isa_config().to_dict()
    assert ISA.ISASettings().to_dict() == isa_config().to_dict()
    model = mv.from_config(config)
    params = mv.abstract_params(model)
    assert not _isa_paths(params)
    assert mv.param_count(params)[0] == 1_746_368               # README's tiny count
    bare = mv.MVDiTCogVideoX(**{f: getattr(model, f) for f in
                                ("num_layers", "num_heads", "time_embed_dim", "text_embed_dim",
                                 "joint_positions")})
    chex.assert_trees_all_equal_shapes(params, mv.abstract_params(bare))


def test_7b_isa_params_and_logical_axes(m7):
    params = m7["params0"]
    block = params["blocks"]["block_0"]
    assert "isa" in block and "attn0" not in block and "unconditional_motion_token" not in params
    assert block["isa"]["video_from_points"]["to_q"]["kernel"].shape[0] == 2   # stacked layers
    assert params["isa_points"]["point_index"].shape == (ISA.ISASettings().points_per_frame, 128)
    specs = nn.get_partition_spec(jax.eval_shape(
        lambda: m7["model"].init(jax.random.PRNGKey(0), m7["x"], m7["ref"], m7["ts"],
                                 motion_mm=_motion(0))))["params"]
    rules = dict(load_config("mvdit.py", "tiny").sharding_rules)
    for path, spec in traverse_util.flatten_dict(specs).items():
        if ISA.is_isa_path(path):
            assert all(name is None or name in rules for name in spec), (path, spec)


def test_7b_zero_init_isa_is_the_base_model(m7):
    out = m7["apply"](m7["params0"], _motion(0), None)
    chex.assert_shape(out, (B, F, H, WD, 16))
    base = mv.from_config(load_config("mvdit.py", "tiny"), motion_every=0,
                          uncond_motion_shape=None)
    tokens = jnp.zeros((B, F * 24, 128))
    want = jax.jit(lambda p: base.apply({"params": p}, m7["x"], m7["ref"], m7["ts"],
                                        motion_tokens=tokens))(_without_isa(m7["params0"]))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_7b_output_depends_on_motion_and_drop_flag_per_example(m7):
    apply, p = m7["apply"], m7["params_r"]
    m0 = _check_motion_and_drop_flag(apply, p, atol=1e-6, tol=1e-5)
    none = jnp.array([True, True])
    np.testing.assert_allclose(m0[0], apply(p, _motion(0), none)[0], rtol=1e-5, atol=1e-5)


def test_7b_explicit_camera(m7):
    """The default camera passed explicitly (8H × 8W pixels) changes nothing; another one does."""
    model, p = m7["model"], m7["params_r"]
    apply = jax.jit(lambda cam: model.apply({"params": p}, m7["x"], m7["ref"], m7["ts"],
                                            motion_mm=_motion(0), camera=cam))
    size = (8 * H, 8 * WD)
    default = Camera.default(size, ISA.ISASettings().fov_degrees)
    np.testing.assert_allclose(apply(default), m7["apply"](p, _motion(0), None),
                               rtol=1e-5, atol=1e-5)
    shifted = Camera.from_matrices(default.intrinsics, size, translation=[200.0, 0.0, 500.0])
    assert float(jnp.abs(apply(shifted) - apply(default)).max()) > 1e-4


def test_7b_model_call_requires_motion(m7):
    with pytest.raises(ValueError, match="motion_mm"):
        m7["model"].apply({"params": m7["params0"]}, m7["x"], m7["ref"], m7["ts"])
    with pytest.raises(ValueError, match="motion_mm must be"):
        m7["model"].apply({"params": m7["params0"]}, m7["x"], m7["ref"], m7["ts"],
                          motion_mm=_motion(0)[:, :4])


def test_7b_generate_with_motion_cfg(m7):
    ref = m7["ref"][:1]
    run = lambda mm, key: gen.generate_7b(m7["model"], m7["params_r"], ref, None, key,  # noqa
                                          num_steps=2, motion_cfg=3.0, motion_mm=mm)
    a = run(_motion(0)[:1], jax.random.PRNGKey(0))
    chex.assert_shape(a, ref.shape)
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, run(_motion(0)[:1], jax.random.PRNGKey(0)))
    assert float(jnp.abs(a - run(_motion(1)[:1], jax.random.PRNGKey(0))).max()) > 1e-4
    with pytest.raises(ValueError, match="motion_mm"):
        gen.generate_7b(m7["model"], m7["params_r"], ref, None, jax.random.PRNGKey(0),
                        num_steps=2)


def test_7b_train_step_trains_only_isa_params():
    config = _config("tiny")
    config.optim.trainable = "motion"
    config.optim.warmup_steps = 0
    config.train.motion_drop_prob = 0.5
    model = steps.build_model(config)
    tx = steps.make_optimizer(config)
    state = steps.init_state(config, model, tx, jax.random.PRNGKey(0))
    state = nn.meta.unbox(state)
    trainable, frozen = steps.split_params(state.params, steps.trainable_predicate(config))
    assert _isa_paths(trainable) and not _isa_paths(frozen)
    assert set(traverse_util.flatten_dict(trainable)) == set(_isa_paths(state.params))
    rng = np.random.default_rng(0)
    batch = {"latents": rng.normal(size=(1, 2, 3, 8, 8, 16)),            # [k, b, F=3, ...]
             "ref_latents": rng.normal(size=(1, 2, 1, 8, 8, 16)),
             "motion": rng.normal(size=(1, 2, 9, 24, 3)) * 300 + [0, 0, 3000],   # T = 9
             "sample_index": np.arange(2, dtype=np.int32)[None]}
    batch = {k: jnp.asarray(v, jnp.int32 if k == "sample_index" else jnp.float32)
             for k, v in batch.items()}
    new, metrics = jax.jit(steps.make_train_step(config, model, tx))(state, batch)
    assert np.isfinite(float(metrics["loss"])) and int(metrics["nonfinite"]) == 0
    before = traverse_util.flatten_dict(state.params)
    after = traverse_util.flatten_dict(new.params)
    for k, v in before.items():
        if ISA.is_isa_path(k):
            continue
        np.testing.assert_array_equal(after[k], v, err_msg="/".join(k))
    moved = [k for k in before if ISA.is_isa_path(k) and not np.array_equal(after[k], before[k])]
    assert len(moved) > len(before) // 10 and ("isa_points", "fc1", "kernel") in moved


# ----------------------------------------------------------------------------------------------
# 17B family
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def m17():
    config = WC.wan_config(_config("tiny17b", every=1))
    model = W.MVDiTWan(config)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, F, H, WD, 16)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(B, F, H, WD, 20)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(B, 3, config.text_dim)), jnp.float32)
    image = jnp.asarray(rng.normal(size=(B, 2, config.image_dim)), jnp.float32)
    ts = jnp.array([300.0, 800.0])
    params0 = W.init_params(config, jax.random.PRNGKey(0))
    params_r = jax.tree.map(jnp.asarray, random_like(params0, 5))
    apply = jax.jit(lambda p, mm, drop: model.apply({"params": p}, x, ts, text, image, y=y,
                                                    motion_mm=mm, motion_drop=drop))
    return dict(config=config, model=model, x=x, y=y, text=text, image=image, ts=ts,
                params0=params0, params_r=params_r, apply=apply)


def test_17b_config_round_trips_and_default_is_unchanged():
    default = WC.wan_config("tiny17b")
    assert default.conditioning == "motion_attention" and default.isa == ISA.ISASettings()
    assert not _isa_paths(W.param_shapes(default))
    assert W.param_counts("tiny17b")["total"] == 7_782_720          # README's tiny17b count
    config = WC.wan_config(_config("tiny17b", every=3, points_per_bone=1, plucker=True))
    assert config.uses_isa and config.isa.every == 3 and config.isa.plucker
    fields = json.loads(json.dumps(WC.project_config(config)))
    assert fields["model"]["isa"]["points_per_bone"] == 1
    assert WC.wan_config(fields) == config
    assert WC.WanDiTConfig.from_fields(config.to_fields()) == config
    with pytest.raises(ValueError, match="unknown model.isa fields"):
        WC.wan_config("tiny17b", isa={"nope": 1})
    with pytest.raises(ValueError, match="conditioning"):
        WC.wan_config("tiny17b", conditioning="tokens")


def test_17b_isa_layout_and_trainable_mask(m17):
    params = m17["params0"]
    block = params["blocks"]["motion_block"]
    assert "isa" in block and "motion_attn" not in block and "norm4" not in block
    assert block["isa"]["ff_video"]["net_2"]["kernel"].shape[0] == 5      # 5 groups of 1
    mask = traverse_util.flatten_dict(W.trainable_mask(params))
    assert {k for k, v in mask.items() if v} == set(_isa_paths(params))


def test_17b_zero_init_isa_is_the_base_model(m17):
    out = m17["apply"](m17["params0"], _motion(0), None)
    chex.assert_shape(out, (B, F, H, WD, 16))
    base = W.MVDiTWan(WC.wan_config("tiny17b", motion_every=0,
                                   text_dim=m17["config"].text_dim))
    flat = traverse_util.flatten_dict(_without_isa(m17["params0"]))
    flat = {(k[:1] + k[2:] if k[:2] == ("blocks", "motion_block") else k): v
            for k, v in flat.items()}
    want = jax.jit(lambda p: base.apply({"params": p}, m17["x"], m17["ts"], m17["text"],
                                        m17["image"], y=m17["y"]))(
        traverse_util.unflatten_dict(flat))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_17b_output_depends_on_motion_and_drop_flag_per_example(m17):
    _check_motion_and_drop_flag(m17["apply"], m17["params_r"], atol=1e-5, tol=1e-4)


def test_17b_generate_with_text_and_motion_cfg(m17):
    y, text, image = m17["y"][:1], m17["text"][:1], m17["image"][:1]
    negative = jnp.zeros_like(text)
    run = lambda mm: gen.generate_17b(m17["model"], m17["params_r"], y, text, negative,  # noqa
                                      image, None, jax.random.PRNGKey(0), num_steps=2,
                                      text_cfg=2.0, motion_cfg=3.0, motion_mm=mm)
    a = run(_motion(0)[:1])
    chex.assert_shape(a, y.shape[:-1] + (16,))
    assert np.all(np.isfinite(a))
    assert float(jnp.abs(a - run(_motion(1)[:1])).max()) > 1e-4
