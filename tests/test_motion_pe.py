"""`motion_pe` / `motion_query_rope` switches of the MV-DiT motion attention, both families.

Model-level checks run ONE forward per switch and family on a batch of four variants of one
example (same latents, timestep and reference), so each switch's invariances are read off a
single call:

  row 0  the motion tokens, joints = a dataset mean (the "4d" model's mean, offset in camera mm)
  row 1  the tokens with their latent frames reversed         (time order of the keys)
  row 2  the tokens with the joints permuted inside each frame (joint identity of the keys)
  row 3  the tokens of row 0, other first-frame joints          (only "dynamic" reads them)

Rows 1 and 2 are invariances of the attention *set* only where the keys' (and queries')
positions do not depend on what was permuted: "none" both, "time" joints, "xy"/"xyz" frames.
The 17B runs with natural key heads (`heads_major_motion_keys=False`), since the released
heads-major key layout mixes tokens across key slots and breaks every permutation invariance.
Parameters are random values of `jax.eval_shape` shapes (nothing compiles for init).
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import load_config
from mtvjax.models.mvdit import motion_pe as PE
from mtvjax.models.mvdit.cogvideox import model as mv
from mtvjax.models.mvdit.wan import config as WC
from mtvjax.models.mvdit.wan import model as W
from mtvjax.models.layers import rope as R
from mtvjax.parallel.sharding import logical_to_spec
from mtvjax.train import mvdit_step as steps

F, H, WD = 2, 4, 4                                  # 2 latent frames, 2×2 patch grid
MEAN = (WC.RELEASED_CENTRED_JOINTS + np.array([10.0, -50.0, 3000.0], np.float32)).astype(
    np.float32)                                     # a dataset mean in camera mm
OTHER = (MEAN + np.random.default_rng(5).normal(scale=80.0, size=(24, 3))).astype(np.float32)
JOINTS = np.stack([MEAN, MEAN, MEAN, OTHER])
# (frames reversed leaves the output unchanged, joints permuted leaves it unchanged)
INVARIANT = {"4d": (False, False), "dynamic": (False, False), "learnable": (False, False),
             "time": (False, True), "xy": (True, False), "xyz": (True, False),
             "none": (True, True)}


def _random_params(shapes, seed: int, scale: float = 0.2, motion_out: float = 0.2):
    """N(0, scale²) values (norm scales 1 + N(0, 0.01)); the motion attention's output
    projection N(0, motion_out²), large enough for the motion branch to show in the output."""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if path[-1] == "scale":
            return 1.0 + 0.1 * noise
        if ("motion_attn" in path and "o" in path) or ("attn0" in path and "to_out" in path):
            return motion_out * noise
        return scale * noise
    flat = traverse_util.flatten_dict(shapes)
    return traverse_util.unflatten_dict({k: value(k, v) for k, v in flat.items()})


def _with_learnable(params, shapes, seed: int, scale: float = 0.5):
    """`params` plus the learnable embedding of `shapes` (larger than init, so it shows)."""
    flat = traverse_util.flatten_dict(params)
    rng = np.random.default_rng(seed)
    for k, v in traverse_util.flatten_dict(shapes).items():
        if "motion_pos_embed" in k:
            flat[k] = (scale * rng.normal(size=v.shape)).astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def _token_variants(width: int) -> np.ndarray:
    tokens = np.random.default_rng(1).normal(size=(F, 24, width)).astype(np.float32)
    perm = np.random.default_rng(2).permutation(24)
    rows = [tokens, tokens[::-1], tokens[:, perm], tokens]
    return np.stack([r.reshape(F * 24, width) for r in rows])


def _outputs(call, switches):
    return {s: np.asarray(call(s)) for s in switches}


def _diff(out, k):
    return float(np.abs(out[k] - out[0]).max())


# ----------------------------------------------------------------------------------------------
# Module-scope forwards: every switch once per family
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def out_7b():
    config = load_config("mvdit.py", "tiny")
    config.model.joint_positions = MEAN.tolist()
    config.model.uncond_motion_shape = None
    config.model.motion_out_zero_init = False

    def model(pe):
        return mv.from_config(config, motion_pe=pe)
    base = _random_params(mv.abstract_params(model("4d")), 0)
    learn = _with_learnable(base, mv.abstract_params(model("learnable")), 1)
    x = np.repeat(np.random.default_rng(3).normal(size=(1, F, H, WD, 16)), 4, 0)
    ref = np.repeat(np.random.default_rng(4).normal(size=(1, F, H, WD, 16)), 4, 0)
    tokens = _token_variants(model("4d").width)

    def call(pe):
        return model(pe).apply({"params": learn if pe == "learnable" else base},
                               jnp.asarray(x, jnp.float32), ref_latents=jnp.asarray(ref),
                               timesteps=jnp.full((4,), 500), motion_tokens=jnp.asarray(tokens),
                               motion_joints=jnp.asarray(JOINTS))
    return _outputs(call, PE.MOTION_PES)


def _tiny17b(**fields):
    return WC.wan_config("tiny17b", num_layers=1, text_len=8, **fields)


@pytest.fixture(scope="module")
def out_17b():
    """17B with the paper's query formulation ("4d"), natural key heads, one (motion) block."""
    def config(pe):
        return _tiny17b(motion_pe=pe, motion_query_rope="4d", heads_major_motion_keys=False)
    base = _random_params(W.param_shapes(config("4d")), 10, scale=0.1, motion_out=1.0)
    learn = _with_learnable(base, W.param_shapes(config("learnable")), 11)
    x = np.repeat(np.random.default_rng(13).normal(size=(1, F, H, WD, 16)), 4, 0)
    y = np.repeat(np.random.default_rng(14).normal(size=(1, F, H, WD, 20)), 4, 0)
    text = np.ones((4, 3, config("4d").text_dim), np.float32)
    tokens = _token_variants(config("4d").motion_dim)
    # the model's static tables use the released (already centred) joints: offset them back
    joints = JOINTS - MEAN + WC.RELEASED_CENTRED_JOINTS + np.array([0.0, 0.0, 2500.0])

    def call(pe):
        return W.MVDiTWan(config(pe)).apply(
            {"params": learn if pe == "learnable" else base}, jnp.asarray(x, jnp.float32),
            jnp.full((4,), 500.0), jnp.asarray(text), None, jnp.asarray(tokens),
            y=jnp.asarray(y, jnp.float32), motion_joints=jnp.asarray(joints, jnp.float32))
    return _outputs(call, PE.MOTION_PES)


@pytest.fixture(params=["7b", "17b"])
def outputs(request):
    return request.getfixturevalue(f"out_{request.param}")


@pytest.mark.parametrize("pe", PE.MOTION_PES)
def test_switch_forward_and_invariances(outputs, pe):
    out = outputs[pe]
    chex.assert_shape(out, (4, F, H, WD, 16))
    chex.assert_tree_all_finite(out)
    scale = float(np.abs(outputs["4d"][0] - outputs["none"][0]).max())
    assert scale > 1e-2, scale                      # the motion PE visibly matters
    frames_inv, joints_inv = INVARIANT[pe]
    for row, invariant in ((1, frames_inv), (2, joints_inv), (3, pe != "dynamic")):
        if invariant:
            assert _diff(out, row) < 1e-4 * scale, (pe, row, _diff(out, row))
        else:
            assert _diff(out, row) > 1e-2 * scale, (pe, row, _diff(out, row))


def test_switches_differ_and_dynamic_at_the_mean_is_4d(outputs):
    """"dynamic" with the dataset-mean joints reproduces "4d" (to float32 rounding of a table
    computed by XLA instead of numpy); every other pair of switches differs."""
    first = {pe: out[0] for pe, out in outputs.items()}
    scale = float(np.abs(first["4d"] - first["none"]).max())
    np.testing.assert_allclose(first["dynamic"], first["4d"], atol=1e-3 * scale)
    others = [pe for pe in PE.MOTION_PES if pe != "dynamic"]
    for i, a in enumerate(others):
        for b in others[i + 1:]:
            assert np.abs(first[a] - first[b]).max() > 1e-3 * scale, (a, b)


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def _identity(table, cols) -> bool:
    return (np.all(np.asarray(table.cos)[..., cols] == 1.0)
            and np.all(np.asarray(table.sin)[..., cols] == 0.0))


def test_4d_tables_are_the_released_ones_bit_for_bit():
    c7 = R.cogvideox_motion_band_dims(64)
    ours = PE.key_table("4d", 13, R.centre_joint_positions(MEAN), c7, 1e4, batch=1)
    want = R.cogvideox_motion_rope(13, MEAN)
    np.testing.assert_array_equal(ours.cos, want.cos)
    np.testing.assert_array_equal(ours.sin, want.sin)
    ours = PE.key_table("4d", 13, WC.RELEASED_CENTRED_JOINTS, R.wan_motion_band_dims(128), 1e4,
                        batch=1)
    want = W.released_motion_rope(13)
    np.testing.assert_array_equal(ours.cos, want.cos)
    np.testing.assert_array_equal(ours.sin, want.sin)


@pytest.mark.parametrize("head_dim,bands", [(64, R.cogvideox_motion_band_dims(64)),
                                            (128, R.wan_motion_band_dims(128))])
def test_key_tables_rotate_only_their_axes(head_dim, bands):
    edges = np.cumsum((0,) + tuple(d // 2 for d in bands))
    t, x, y, z = (slice(edges[i], edges[i + 1]) for i in range(4))
    centred = R.centre_joint_positions(MEAN)
    moved_z = centred.copy()
    moved_z[:, 2] += np.linspace(-90, 90, 24, dtype=np.float32)
    full = PE.static_key_table("4d", 3, centred, bands, 1e4)

    def table(pe, joints=centred):
        return PE.static_key_table(pe, 3, joints, bands, 1e4)
    assert table("none") is None and table("learnable") is None
    time = table("time")
    assert _identity(time, np.r_[x, y, z]) and not _identity(time, t)
    np.testing.assert_array_equal(time.cos[:, t], full.cos[:, t])
    np.testing.assert_array_equal(table("time", moved_z).cos, time.cos)   # joints unused
    xy = table("xy")
    assert _identity(xy, np.r_[t, z]) and not _identity(xy, np.r_[x])
    np.testing.assert_array_equal(table("xy", moved_z).cos, xy.cos)       # z unused
    xyz = table("xyz")
    assert _identity(xyz, np.r_[t]) and not _identity(xyz, np.r_[z])
    assert not np.array_equal(table("xyz", moved_z).cos, xyz.cos)         # z used
    np.testing.assert_array_equal(xyz.cos[:, np.r_[x, y, z]], full.cos[:, np.r_[x, y, z]])
    for pe in ("xy", "xyz"):                        # no time: every frame has the same rows
        np.testing.assert_array_equal(table(pe).cos[:24], table(pe).cos[48:])

    # dynamic: per example, centred per axis, = the static table of the same joints
    batch = np.stack([MEAN, OTHER])
    dyn = jax.jit(lambda j: PE.dynamic_key_table(j, 3, bands, 1e4))(batch)
    chex.assert_shape(dyn.cos, (2, 72, head_dim // 2))
    for i, joints in enumerate(batch):
        ref = PE.static_key_table("4d", 3, R.centre_joint_positions(joints), bands, 1e4)
        np.testing.assert_allclose(dyn.cos[i], ref.cos, atol=2e-3)
        np.testing.assert_allclose(dyn.sin[i], ref.sin, atol=2e-3)
    shifted = PE.dynamic_key_table(batch + np.float32(250.0), 3, bands, 1e4)
    np.testing.assert_allclose(shifted.cos, dyn.cos, atol=2e-3)   # centring removes offsets


@pytest.mark.parametrize("family", ["7b", "17b"])
def test_query_tables_follow_the_key_axes(family):
    if family == "7b":
        vb, mb = R.cogvideox_vision_band_dims(64), R.cogvideox_motion_band_dims(64)
        dtype = np.float32
        vision = R.cogvideox_vision_rope(3, 2, 2, 64)
    else:
        vb, mb, dtype = R.wan_vision_band_dims(128), R.wan_motion_band_dims(128), np.float64
        vision = R.wan_vision_rope(3, 2, 2, 128)
    nt = vb[0] // 2
    assert vb[0] == mb[0]                           # both families: one t band width

    def q(pe, mode):
        return PE.query_table(pe, mode, 3, 2, 2, vb, mb, 1e4, dtype)
    for mode in PE.MOTION_QUERY_ROPES:
        assert q("none", mode) is None and q("learnable", mode) is None
        time = q("time", mode)
        assert _identity(time, np.s_[nt:]) and not _identity(time, np.s_[:nt])
        for pe in ("xy", "xyz"):                   # (h, w) only: t band identity, rows per frame
            table = q(pe, mode)
            assert _identity(table, np.s_[:nt]) and not _identity(table, np.s_[nt:])
            np.testing.assert_array_equal(table.cos[:4], table.cos[8:])
    np.testing.assert_array_equal(q("time", "vision").cos, q("time", "4d").cos)
    np.testing.assert_array_equal(q("4d", "vision").cos, vision.cos)   # released pairing
    assert PE.released_query("dynamic", "vision") and not PE.released_query("time", "vision")
    paper = q("4d", "4d")                           # (t, h, w, 0) in the motion bands
    assert _identity(paper, np.s_[sum(mb[:3]) // 2:])
    np.testing.assert_array_equal(paper.cos, q("dynamic", "4d").cos)


# ----------------------------------------------------------------------------------------------
# Config, learnable parameter, errors
# ----------------------------------------------------------------------------------------------


def test_config_fields_and_errors():
    for variant in ("tiny", "tiny17b"):
        m = load_config("mvdit.py", variant).model
        assert (m.motion_pe, m.motion_query_rope, m.max_motion_frames) == ("4d", "vision", 13)
    with pytest.raises(ValueError, match="unknown motion_pe"):
        WC.wan_config("tiny17b", motion_pe="5d")
    with pytest.raises(ValueError, match="unknown motion_query_rope"):
        WC.wan_config("tiny17b", motion_query_rope="xy")
    config = load_config("mvdit.py", "tiny")
    config.model.motion_pe = "sideways"
    with pytest.raises(ValueError, match="unknown motion_pe"):
        mv.abstract_params(mv.from_config(config))
    with pytest.raises(ValueError, match="neither first_joints nor motion"):
        steps.joints_of({})


def test_dynamic_needs_joints_at_apply_but_not_at_init():
    config = load_config("mvdit.py", "tiny")
    config.model.motion_pe = "dynamic"
    config.model.uncond_motion_shape = None
    model = mv.from_config(config)
    shapes = mv.abstract_params(model)              # init without motion_joints
    params = _random_params(shapes, 0)
    inputs = mv.dummy_inputs(model)
    with pytest.raises(ValueError, match="needs `motion_joints`"):
        jax.eval_shape(lambda p: model.apply({"params": p}, **inputs), params)
    with pytest.raises(ValueError, match=r"motion_joints must be \[1, 24, 3\]"):
        jax.eval_shape(lambda p: model.apply({"params": p}, **inputs,
                                             motion_joints=jnp.zeros((1, 23, 3))), params)
    wan = _tiny17b(motion_pe="dynamic")
    with pytest.raises(ValueError, match="needs `motion_joints`"):
        jax.eval_shape(lambda p: W.MVDiTWan(wan).apply({"params": p}, *W.dummy_inputs(wan)),
                       W.param_shapes(wan))


def test_learnable_embedding_init_axes_and_limit():
    module = PE.MotionPositionEmbedding(24, max_frames=13)
    tokens = jnp.zeros((2, 2 * 24, 256))
    variables = module.init(jax.random.PRNGKey(0), tokens)
    params = nn.meta.unbox(variables)["params"]
    assert params["joint_embed"].shape == (24, 256) and params["frame_embed"].shape == (13, 256)
    assert 0.015 < float(jnp.std(params["frame_embed"])) < 0.025
    out = module.apply(variables, tokens)
    np.testing.assert_allclose(out[0, 24 + 5], params["frame_embed"][1] + params["joint_embed"][5],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="exceed max_motion_frames=13"):
        module.init(jax.random.PRNGKey(0), jnp.zeros((1, 14 * 24, 8)))

    config = load_config("mvdit.py", "tiny")
    config.model.motion_pe = "learnable"
    axes = traverse_util.flatten_dict(mv.logical_axes(mv.from_config(config)))
    assert tuple(axes[("motion_pos_embed", "joint_embed")]) == ("motion_joints", "embed")
    assert tuple(axes[("motion_pos_embed", "frame_embed")]) == ("motion_frames", "embed")
    spec = logical_to_spec(("motion_frames", "embed"), config.sharding_rules)
    assert tuple(spec) == (None, ("fsdp", "context"))
    wan = traverse_util.flatten_dict(W.param_logical_axes(_tiny17b(motion_pe="learnable")))
    assert tuple(wan[("motion_pos_embed", "joint_embed")]) == ("motion_joints", "embed")
    config.optim.trainable = "motion"
    assert steps.trainable_predicate(config)(("motion_pos_embed", "joint_embed"))
    assert W.is_trainable_path(("motion_pos_embed", "frame_embed"))


@pytest.mark.parametrize("family", ["7b", "17b"])
def test_learnable_embedding_receives_gradient(family):
    if family == "7b":
        config = load_config("mvdit.py", "tiny")
        config.model.motion_pe = "learnable"
        config.model.uncond_motion_shape = None
        config.model.num_layers = 1
        config.model.motion_out_zero_init = False
        model = mv.from_config(config)
        params = _random_params(mv.abstract_params(model), 0)
        inputs = mv.dummy_inputs(model, frames=F)

        def loss(p):
            return jnp.sum(model.apply({"params": p}, **inputs) ** 2)
    else:
        config = _tiny17b(motion_pe="learnable")
        model = W.MVDiTWan(config)
        params = _random_params(W.param_shapes(config), 0)
        x, t, text, image, motion = W.dummy_inputs(config)
        motion = jnp.ones((1, F * 24, config.motion_dim))

        def loss(p):
            return jnp.sum(model.apply({"params": p}, x, t, text, image, motion) ** 2)
    grads = jax.jit(jax.grad(loss))(params)["motion_pos_embed"]
    frame = np.asarray(grads["frame_embed"])
    assert np.all(np.abs(grads["joint_embed"]).max(axis=1) > 0)     # every joint row
    assert np.abs(frame[:F]).max() > 0 and not np.any(frame[F:])   # only the frames used


# ----------------------------------------------------------------------------------------------
# Data, train step, sampling
# ----------------------------------------------------------------------------------------------


def test_records_carry_first_joints(tmp_path):
    import msgpack

    from data_pipeline import latents as latent_build
    from mtvjax.data import latent_records as L
    from mtvjax.data.latent_batches import make_latent_batches
    from mtvjax.data.latent_shard_source import LatentShardSource
    from mtvjax.data.synthetic_latents import SyntheticLatentSource
    source = SyntheticLatentSource(2, 9, (4, 4))
    item = source[0]
    np.testing.assert_array_equal(item["first_joints"], item["motion"][0])
    data = L.encode_latent_record(key="k", source_id="s", latents=item["latents"],
                                  ref_latents=item["ref_latents"], motion=item["motion"],
                                  first_joints=item["motion"][0] + 1.0)
    np.testing.assert_array_equal(L.decode_latent_record(data)["first_joints"],
                                  item["motion"][0] + 1.0)
    raw = msgpack.unpackb(data, raw=False)         # a record written before the field existed
    del raw["first_joints"]
    old = L.decode_latent_record(msgpack.packb(raw, use_bin_type=True))
    np.testing.assert_array_equal(old["first_joints"], item["motion"][0])
    with pytest.raises(ValueError, match="first_joints must be"):
        L.encode_latent_record(key="k", source_id="s", latents=item["latents"],
                               ref_latents=item["ref_latents"], motion=item["motion"],
                               first_joints=np.zeros((24, 2)))
    batch = make_latent_batches(source, 2, 0)[0]
    np.testing.assert_array_equal(batch["first_joints"], batch["motion"][:, 0])

    config = load_config("data/synthetic_latents.py", "tiny")
    config.output = str(tmp_path / "built")
    config.motion.synthetic_sequences = 4
    latent_build.build(config)
    built = LatentShardSource(tmp_path / "built")[0]
    np.testing.assert_array_equal(built["first_joints"], built["motion"][0])


def test_dynamic_train_step_uses_the_records_first_joints():
    """`--config.model.motion_pe=dynamic`: the tiny trainer's step takes `first_joints` from the
    items and the loss depends on them."""
    from mtvjax.data.latent_batches import make_latent_batches
    from mtvjax.train import mvdit_trainer as T
    config = load_config("mvdit.py", "tiny")
    config.model.motion_pe = "dynamic"
    config.model.num_layers = 1
    config.model.motion_out_zero_init = False
    config.model.uncond_motion_shape = None
    config.data.synthetic_windows = 4
    config.data.synthetic_latent_size = (4, 4)
    config.data.batch_size = 2
    config.train.motion_drop_prob = 0.0
    source = T.make_source(config)
    config, _ = T.fit_config(config, source[0])
    trainer = T.MVDiTTrainer(config, jax.devices()[:1])
    local = make_latent_batches(source, 2, 0)[0]
    batch = trainer.device_batch(local)
    chex.assert_shape(batch["first_joints"], (1, 2, 24, 3))
    # a state of the abstract state's shapes (random params, zero optimiser state): no init
    abstract = trainer.abstract_state()
    init = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    init = init.replace(params=_random_params(abstract.params, 0))
    _, metrics = trainer.step(jax.device_put(init, trainer.state_shardings), batch)
    moved = trainer.device_batch(dict(local, first_joints=local["first_joints"] + np.float32(
        np.random.default_rng(0).normal(scale=100.0, size=(24, 3)))))
    _, other = trainer.step(jax.device_put(init, trainer.state_shardings), moved)
    assert np.isfinite(float(metrics["loss"]))
    assert float(metrics["loss"]) != float(other["loss"])
    plain = config.copy_and_resolve_references()
    plain.model.motion_pe = "4d"
    assert "first_joints" not in T.MVDiTTrainer(plain, jax.devices()[:1]).device_batch(local)


def test_generate_with_motion_joints_both_families():
    from mtvjax.sample.mvdit_generate import generate_17b, generate_7b
    joints = jnp.asarray(MEAN[None])
    config = load_config("mvdit.py", "tiny")
    config.model.motion_pe = "dynamic"
    config.model.num_layers = 1
    config.model.motion_out_zero_init = False
    config.model.uncond_motion_shape = (F * 24, 128)
    model = mv.from_config(config)
    params = _random_params(mv.abstract_params(model), 0)
    ref = jax.random.normal(jax.random.PRNGKey(0), (1, F, H, WD, 16))
    motion = jax.random.normal(jax.random.PRNGKey(1), (1, F * 24, 128))
    out = generate_7b(model, params, ref, motion, jax.random.PRNGKey(2), num_steps=2,
                      motion_joints=joints)
    chex.assert_shape(out, (1, F, H, WD, 16))
    chex.assert_tree_all_finite(out)
    with pytest.raises(ValueError, match="needs `motion_joints`"):
        generate_7b(model, params, ref, motion, jax.random.PRNGKey(2), num_steps=2)

    wan = _tiny17b(motion_pe="dynamic")
    model = W.MVDiTWan(wan)
    params = _random_params(W.param_shapes(wan), 0)
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    y = jax.random.normal(keys[0], (1, F, H, WD, 20))
    text = jax.random.normal(keys[1], (1, 3, wan.text_dim))
    image = jax.random.normal(keys[2], (1, 4, wan.image_dim))
    motion = jax.random.normal(keys[3], (1, F * 24, wan.motion_dim))
    out = generate_17b(model, params, y, text, -text, image, motion, jax.random.PRNGKey(4),
                       num_steps=2, motion_joints=joints)
    chex.assert_shape(out, (1, F, H, WD, 16))
    chex.assert_tree_all_finite(out)
