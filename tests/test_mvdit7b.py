"""MV-DiT-7B (CogVideoX family): parity with an independent PyTorch model of the release and with
diffusers' CogVideoXTransformer3DModel (base-model conversion), parameter counts at tiny and full
size, the scanned layer stack, conversion file formats and error messages."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.torch import save_file

import torch_reference_mvdit7b as ref
from conftest import load_config
from mtvjax.models.mvdit.cogvideox import convert as conv
from mtvjax.checkpoint.conversion import ConversionError
from mtvjax.models.layers.attention import AttentionKernel
from mtvjax.models.mvdit.cogvideox import model as mv

# Test geometry: 2 latent frames of 4×6 (a 2×3 patch grid, non-square to catch h/w swaps).
B, F, H, W = 2, 2, 4, 6
M = F * 24
TINY_PARAMS, TINY_TENSORS = 1_746_368, 89
# 7B: 42 × 169,958,912 per block + 19,137,600 outside the blocks (derivation in the report).
FULL_PARAMS, FULL_TENSORS = 7_157_411_904, 17 + 36 * 42
RTOL = 1e-5


def make_config(**model):
    """configs/mvdit.py:tiny with a usable unconditional token ([F·24, 128]) and mean joints."""
    config = load_config("mvdit.py", "tiny")
    config.model.uncond_motion_shape = (M, 128)
    joints = np.random.default_rng(7).normal(0, 300, (24, 3)) + [0, 0, 1780]
    config.model.joint_positions = joints.astype(np.float32).tolist()
    config.model.update(model)
    return config


def randomise(model: torch.nn.Module, seed: int):
    """Random weights; LayerNorm affine away from 1/0 so that a swapped scale/bias shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    return model.eval()


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return dict(latents=rng.normal(size=(B, F, H, W, 16)).astype(f32),
                ref_latents=rng.normal(size=(B, F, H, W, 16)).astype(f32),
                timesteps=np.array([999, 321], np.int32),
                motion_tokens=rng.normal(size=(B, M, 128)).astype(f32),
                motion_drop=np.array([True, False]))


def torch_forward(model, x, config, query_4d=False):
    """The released forward on `inputs()`, CFG slot 0 unconditional as the pipeline does."""
    hs = torch.from_numpy(np.concatenate([x["latents"], x["ref_latents"]], -1)).permute(0, 1, 4,
                                                                                       2, 3)
    motion = torch.from_numpy(x["motion_tokens"]).clone()
    motion[torch.from_numpy(x["motion_drop"])] = model.unconditional_motion_token.detach()
    p = config.model.patch_size
    vis = ref.vision_rope(F, H // p, W // p)
    mot = ref.motion_rope(F, np.asarray(config.model.joint_positions, np.float32))
    mq = ref.rope_4d_query(F, H // p, W // p) if query_4d else None
    with torch.no_grad():
        out = model(hs, torch.from_numpy(x["timesteps"]).long(), motion, vis, mot, mq)
    return out.permute(0, 1, 3, 4, 2).numpy()


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


_APPLY = {}


def apply(model, params, x):
    """One jitted `apply` per model configuration (params are arguments: no recompiles)."""
    if model not in _APPLY:
        _APPLY[model] = jax.jit(lambda p, a: model.apply({"params": p}, **a))
    return np.asarray(_APPLY[model](params, {k: jnp.asarray(v) for k, v in x.items()}))


def write_sharded(state: dict, folder, shards=3):
    """diffusers-style sharded safetensors folder with its index json."""
    folder.mkdir()
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Random tiny reference model, saved as one safetensors file and as a sharded folder."""
    config = make_config()
    model = randomise(ref.ReferenceMVDiT7B(uncond_shape=(M, 128)), seed=0)
    state = model.state_dict()
    root = tmp_path_factory.mktemp("mvdit7b")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    write_sharded(state, root / "sharded")
    return dict(config=config, model=model, state=state, root=root)


@pytest.fixture(scope="module")
def converted(released):
    config, params, summary = conv.load_params(released["root"] / "model.safetensors",
                                               released["config"])
    return dict(config=config, params=params, summary=summary, model=mv.from_config(config))


# ----------------------------------------------------------------------------------------------
# (a) parity with the independent torch model of the release
# ----------------------------------------------------------------------------------------------


def test_parity_with_torch_reference(released, converted):
    x = inputs()
    want = torch_forward(released["model"], x, released["config"])
    got = apply(converted["model"], converted["params"], x)
    assert got.shape == (B, F, H, W, 16)
    err = rel_err(got, want)
    assert err < RTOL, err
    # the motion path matters: the conditional slot differs from its unconditional twin
    x2 = dict(x, motion_drop=np.array([True, True]))
    assert rel_err(apply(converted["model"], converted["params"], x2)[1], want[1]) > 1e-3
    assert converted["summary"]["source_format"] == "mvdit7b"


def test_reference_sdpa_switch_is_the_same_maths(released, monkeypatch):
    """The speed checks' PyTorch SDPA path (`USE_SDPA`) computes the reference's attention."""
    x = inputs()
    want = torch_forward(released["model"], x, released["config"])
    monkeypatch.setattr(ref, "USE_SDPA", True)
    assert rel_err(torch_forward(released["model"], x, released["config"]), want) < 1e-5


@pytest.mark.parametrize("kernel", ["xla", "softmax", "chunked", "splash"])
def test_parity_with_torch_reference_per_attention_kernel(released, converted, kernel):
    """The memory-bounded kernels reproduce the release too (splash: Pallas interpret mode)."""
    model = mv.from_config(converted["config"],
                           attention_implementation=AttentionKernel(kernel, chunk=5, kv_chunk=7))
    x = inputs()
    err = rel_err(apply(model, converted["params"], x), torch_forward(released["model"], x,
                                                                      released["config"]))
    assert err < RTOL, err


def test_unconditional_default_and_sharded_source(released, converted):
    """motion_tokens=None uses the learned token for all; the sharded folder converts equally."""
    _, sharded, _ = conv.load_params(released["root"] / "sharded", released["config"])
    same = jax.tree.map(lambda a, b: np.array_equal(a, b), sharded, converted["params"])
    assert all(jax.tree.leaves(same))
    x = inputs(1)
    x_all_uncond = dict(x, motion_drop=np.array([True, True]))
    want = torch_forward(released["model"], x_all_uncond, released["config"])
    model = converted["model"]
    got = np.asarray(jax.jit(lambda p, a: model.apply({"params": p}, **a))(
        sharded, {k: jnp.asarray(v) for k, v in x.items() if k not in ("motion_tokens",
                                                                       "motion_drop")}))
    assert rel_err(got, want) < RTOL


def test_paper_variants_match_reference(tmp_path):
    """motion_every=2, LayerNorm on V, 4-D query positions, against the torch model's options."""
    config = make_config(motion_every=2, motion_v_norm=True, motion_query_rope="4d")
    model = randomise(ref.ReferenceMVDiT7B(uncond_shape=(M, 128), motion_every=2, v_norm=True),
                      seed=1)
    assert "transformer_blocks.1.attn0.to_q.weight" not in model.state_dict()
    save_file(dict(model.state_dict()), str(tmp_path / "v.safetensors"))
    config, params, _ = conv.load_params(tmp_path / "v.safetensors", config)
    assert set(params["blocks"]) == {"block_0", "block_1"}
    assert "attn0" not in params["blocks"]["block_1"]
    x = inputs(2)
    err = rel_err(apply(mv.from_config(config), params, x),
                  torch_forward(model, x, config, query_4d=True))
    assert err < RTOL, err


# ----------------------------------------------------------------------------------------------
# (b) parity of the shared parts with diffusers' CogVideoXTransformer3DModel (base conversion)
# ----------------------------------------------------------------------------------------------


def test_parity_with_diffusers_cogvideox_base(tmp_path, released):
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(3)
    base = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=64, in_channels=16, out_channels=16,
        time_embed_dim=64, text_embed_dim=32, num_layers=2, sample_frames=5, sample_height=H,
        sample_width=W, use_rotary_positional_embeddings=True)
    randomise(base, seed=3)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()},
              str(tmp_path / "base.safetensors"))
    config, params, summary = conv.load_params(tmp_path / "base.safetensors", released["config"],
                                               seed=5)
    assert summary["source_format"] == "cogvideox"
    assert "unconditional_motion_token" in summary["fresh"]
    attn0 = params["blocks"]["block_0"]["attn0"]
    assert not np.any(attn0["to_out"]["kernel"]) and not np.any(attn0["to_out"]["bias"])
    assert np.any(attn0["to_q"]["kernel"])
    assert not np.any(params["patch_embed"]["proj"]["kernel"][16 * 4:])  # reference channels

    x = inputs(4)
    cos, sin = get_3d_rotary_pos_embed(64, ((0, 0), (H // 2, W // 2)), (H // 2, W // 2), F)
    with torch.no_grad():
        want = base(hidden_states=torch.from_numpy(x["latents"]).permute(0, 1, 4, 2, 3),
                    encoder_hidden_states=torch.zeros(B, 0, 32),
                    timestep=torch.from_numpy(x["timesteps"]).long(),
                    image_rotary_emb=(cos, sin), return_dict=False)[0]
    want = want.permute(0, 1, 3, 4, 2).numpy()
    got = apply(mv.from_config(config), params, x)   # reference latents, motion: no effect
    err = rel_err(got, want)
    assert err < RTOL, err


# ----------------------------------------------------------------------------------------------
# (c) parameter counts
# ----------------------------------------------------------------------------------------------


def full_size_source_shapes(config, source_format):
    """{key: shape} a full-size file has, derived from the name table and the rules."""
    model = mv.from_config(config)
    targets = conv.target_shapes(model)
    rules = conv.rules(config.model.patch_size, config.model.out_channels)
    shapes = {}
    for e in conv.name_table(config.model, source_format):
        t = targets[e.target][1:] if e.index is not None else targets[e.target]
        shapes[e.source] = tuple(rules[e.rule].source_shapes(t)[-1])
    return shapes


def test_parameter_counts():
    tiny = mv.abstract_params(mv.from_config(load_config("mvdit.py", "tiny")))
    assert mv.param_count(tiny) == (TINY_PARAMS, TINY_TENSORS)
    torch_tiny = ref.ReferenceMVDiT7B()
    assert list(torch_tiny.state_dict()) == ref.released_keys(2)
    assert sum(p.numel() for p in torch_tiny.parameters()) == TINY_PARAMS

    config = load_config("mvdit.py", "7b")
    full = mv.abstract_params(mv.from_config(config))
    assert mv.param_count(full) == (FULL_PARAMS, FULL_TENSORS)
    assert full["blocks"]["block_0"]["attn0"]["to_q"]["kernel"].shape == (42, 3072, 3072)
    # The full-size released file layout converts: names and shapes of the doc's real column.
    shapes = full_size_source_shapes(config, "mvdit7b")
    assert sorted(shapes) == sorted(ref.released_keys(42))
    assert shapes["transformer_blocks.41.norm1.linear.weight"] == (18432, 512)
    assert shapes["patch_embed.proj.weight"] == (3072, 32, 2, 2)
    assert shapes["patch_embed.text_proj.weight"] == (3072, 4096)
    assert shapes["proj_out.weight"] == (64, 3072)
    assert sum(int(np.prod(s)) for s in shapes.values()) == FULL_PARAMS
    targets = conv.target_shapes(mv.from_config(config))
    conv.check_layout(shapes, targets, conv.name_table(config.model), conv.rules(2, 16), "7b",
                      stacked=conv.is_stacked)
    # The CogVideoX-5B base layout: no attn0, no token, 16 input channels.
    base = full_size_source_shapes(config, "cogvideox")
    assert base["patch_embed.proj.weight"] == (3072, 16, 2, 2)
    assert len(base) == FULL_TENSORS - 1 - 42 * 12
    assert sum(int(np.prod(s)) for s in base.values()) == 5_570_283_072


# ----------------------------------------------------------------------------------------------
# (d) the scanned stack
# ----------------------------------------------------------------------------------------------


def test_scan_stacks_layers_in_order(released, converted):
    params, state = converted["params"], released["state"]
    for n in range(2):
        np.testing.assert_array_equal(
            params["blocks"]["block_0"]["attn1"]["to_q"]["kernel"][n],
            state[f"transformer_blocks.{n}.attn1.to_q.weight"].numpy().T)
        np.testing.assert_array_equal(
            params["blocks"]["block_0"]["ff"]["net_2"]["bias"][n],
            state[f"transformer_blocks.{n}.ff.net.2.bias"].numpy())
    x = inputs()
    base = apply(converted["model"], params, x)
    outs = []
    for n in range(2):
        flat = traverse_util.flatten_dict(params)
        key = ("blocks", "block_0", "ff", "net_2", "bias")
        flat[key] = flat[key].copy()
        flat[key][n] += 0.5
        outs.append(apply(converted["model"], traverse_util.unflatten_dict(flat), x))
        assert rel_err(outs[-1], base) > 1e-3
    assert rel_err(outs[0], outs[1]) > 1e-4


# ----------------------------------------------------------------------------------------------
# (e) files, checkpoints and errors
# ----------------------------------------------------------------------------------------------


def test_orbax_checkpoint_and_torch_file(tmp_path, released, converted):
    torch.save({"module": dict(released["state"])}, tmp_path / "model.pt")
    _, from_pt, _ = conv.load_params(tmp_path / "model.pt", released["config"])
    summary = conv.convert_mvdit7b(released["root"] / "model.safetensors", tmp_path / "ckpt",
                                   variant=released["config"])
    assert summary["params"] == TINY_PARAMS - 312 * 3072 + M * 128
    config, model, restored = conv.restore_mvdit7b(tmp_path / "ckpt")
    assert model == converted["model"]
    for tree in (from_pt, restored):
        same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), tree,
                            converted["params"])
        assert all(jax.tree.leaves(same))
    with pytest.raises(FileExistsError):
        conv.convert_mvdit7b(released["root"] / "model.safetensors", tmp_path / "ckpt",
                             variant=released["config"])


def _save(tmp_path, state, name="bad.safetensors"):
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    return tmp_path / name


def test_conversion_errors_name_keys(tmp_path, released):
    state, config = dict(released["state"]), released["config"]
    missing = dict(state)
    del missing["transformer_blocks.1.attn0.norm_k.bias"]
    missing["transformer_blocks.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError) as e:
        conv.load_params(_save(tmp_path, missing), config)
    msg = str(e.value)
    assert "missing keys: transformer_blocks.1.attn0.norm_k.bias" in msg
    assert "unused source keys: transformer_blocks.0.extra.weight" in msg

    wrong = dict(state, **{"transformer_blocks.0.ff.net.2.weight": torch.zeros(128, 256)})
    with pytest.raises(ConversionError, match=r"transformer_blocks\.0\.ff\.net\.2\.weight: "
                                              r"shape \(128, 256\) in file, expected \(128, 512\)"):
        conv.load_params(_save(tmp_path, wrong, "wrong.safetensors"), config)

    with pytest.raises(ConversionError, match="shapes disagree with variant 'tiny'.*"
                                              "uncond_motion_shape"):
        conv.load_params(released["root"] / "model.safetensors", "tiny")

    folder = tmp_path / "sharded"
    write_sharded(state, folder)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["proj_out.bias"] = "diffusion_pytorch_model-00001-of-00003.safetensors"
    data["weight_map"].pop("norm_final.bias")
    index.write_text(json.dumps(data))
    with pytest.raises(ConversionError) as e:
        conv.load_params(folder, config)
    assert "proj_out.bias" in str(e.value) and "norm_final.bias" in str(e.value)


def test_bf16_remat_and_logical_axes(released, converted):
    """bf16 compute with a remat policy runs close to float32; the rematerialised scan traces
    under grad; every parameter carries logical axis names (stacked ones lead with `layers`)."""
    x = {k: jnp.asarray(v) for k, v in inputs().items()}
    model = mv.from_config(converted["config"], dtype=jnp.bfloat16, remat="dots_saveable")
    got = apply(model, converted["params"], x)
    assert got.dtype == jnp.bfloat16
    want = apply(converted["model"], converted["params"], x)
    assert rel_err(got.astype(np.float32), want) < 0.05

    def loss(p):
        return jnp.mean(jnp.square(model.apply({"params": p}, **x).astype(jnp.float32)))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(converted["params"]))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    with pytest.raises(ValueError, match="unknown remat policy"):
        mv.from_config(converted["config"], remat="sometimes").init(
            jax.random.PRNGKey(0), **mv.dummy_inputs(converted["model"]))

    axes = {k: tuple(v) for k, v in
            traverse_util.flatten_dict(mv.logical_axes(converted["model"])).items()}
    assert axes[("blocks", "block_0", "attn0", "to_q", "kernel")] == ("layers", "embed", "heads")
    assert axes[("blocks", "block_0", "ff", "net_0", "kernel")] == ("layers", "embed", "mlp")
    assert axes[("unconditional_motion_token",)] == ("motion_tokens", "embed")
    assert all(len(spec) == len(leaf.shape) and all(n is not None for n in spec)
               for spec, leaf in zip(
                   (axes[k] for k in sorted(axes)),
                   (traverse_util.flatten_dict(converted["params"])[k] for k in sorted(axes))))
    from mtvjax.parallel.sharding import logical_to_spec
    spec = logical_to_spec(axes[("blocks", "block_0", "attn1", "to_out", "kernel")],
                           converted["config"].sharding_rules)
    assert tuple(spec) == (None, "tensor", ("fsdp", "context"))


def test_model_input_errors(converted):
    model, x = converted["model"], inputs()
    with pytest.raises(ValueError, match="motion tokens must be"):
        model.apply({"params": converted["params"]}, x["latents"], x["ref_latents"],
                    x["timesteps"], x["motion_tokens"][..., :64])
    with pytest.raises(ValueError, match="noisy | reference"):
        model.apply({"params": converted["params"]}, x["latents"], None, x["timesteps"])
