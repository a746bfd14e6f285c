"""MV-DiT-17B (Wan-based): parity with an independent PyTorch reference and with diffusers' Wan,
conversion (single file, sharded folder, LoRA merge, base model), scan layout, parameter counts,
logical axes and the trainable mask. All at the tiny config (dim 256, 2 heads of 128, 5 layers)."""
from __future__ import annotations

import functools
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from mtvjax.checkpoint.conversion import TensorSource, check_layout, slot_of  # noqa: E402
from mtvjax.models.mvdit.wan import convert as C  # noqa: E402
from mtvjax.models.mvdit.wan.blocks import LOGICAL_AXES  # noqa: E402
from mtvjax.models.mvdit.wan import config as WC  # noqa: E402
from mtvjax.models.mvdit.wan import model as W  # noqa: E402
from mtvjax.models.layers import rope as R  # noqa: E402
import torch_reference_mvdit17b as T  # noqa: E402

TINY = WC.wan_config("tiny17b")
B, F, H, WD = 2, 2, 4, 4           # latent video [F, H, W]; S = 2·2·2 = 8 tokens
TEXT_LENS = (5, 9)
TOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return T.randomize_(T.Transformer17B(**T.TINY), seed=0).eval()


@pytest.fixture(scope="module")
def inputs():
    """Text is given as 512 rows (the released text_len) with garbage beyond `TEXT_LENS`, which
    `text_lens` must blank; every tiny-config forward then shares one compiled program."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    text = np.full((B, TINY.text_len, TINY.text_dim), 7.0, f32)
    for b, n in enumerate(TEXT_LENS):
        text[b, :n] = rng.normal(size=(n, TINY.text_dim))
    return dict(
        x=rng.normal(size=(B, 16, F, H, WD)).astype(f32),
        y=rng.normal(size=(B, 20, F, H, WD)).astype(f32),
        t=np.array([3.0, 937.5], f32),
        text=text,
        text_lens=np.array(TEXT_LENS, np.int32),
        clip=rng.normal(size=(B, 257, 1280)).astype(f32),
        motion=rng.normal(size=(B, F * 24, TINY.motion_dim)).astype(f32))


def run_reference(model, inp, motion=True):
    cos, sin = T.motion_rope_tables(F, WC.RELEASED_CENTRED_JOINTS, TINY.head_dim)
    with torch.no_grad():
        out = model(torch.from_numpy(inp["x"]), torch.from_numpy(inp["t"]),
                    [torch.from_numpy(inp["text"][b, :n]) for b, n in enumerate(TEXT_LENS)],
                    F * (H // 2) * (WD // 2), torch.from_numpy(inp["clip"]),
                    torch.from_numpy(inp["y"]),
                    torch.from_numpy(inp["motion"]) if motion else None, (cos, sin))
    return out.numpy().transpose(0, 2, 3, 4, 1)          # -> [B, F, H, W, C]


@pytest.fixture(scope="module")
def reference_out(reference, inputs):
    return run_reference(reference, inputs)


_APPLY = {}


def apply_fn(config):
    """One jitted forward per config (tests with the same config share the compile)."""
    if config not in _APPLY:
        model = W.MVDiTWan(config)

        def fn(params, x, y, t, text, clip, motion, text_lens):
            return model.apply({"params": params}, x, t, text, clip, motion, y=y,
                               text_lens=text_lens)
        _APPLY[config] = jax.jit(fn)
    return _APPLY[config]


def run_jax(params, inp, config=TINY, motion=True):
    return np.asarray(apply_fn(config)(
        params, inp["x"].transpose(0, 2, 3, 4, 1), inp["y"].transpose(0, 2, 3, 4, 1), inp["t"],
        inp["text"], inp["clip"], inp["motion"] if motion else None, inp["text_lens"]))


def state_dict_numpy(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def single_file(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("mvdit17b") / "mvdit17b.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, single_file):
    """Released file → Orbax checkpoint → (config, params)."""
    dst = tmp_path_factory.mktemp("ckpt") / "out"
    summary = C.convert_mvdit17b(single_file, dst, variant="tiny17b")
    assert summary["total_params"] == 7_782_720 and summary["trainable_params"] == 528_384
    config, params = C.load_converted(dst)
    assert config == TINY
    return params


# ----------------------------------------------------------------------------------------------
# Parameter counts and layout
# ----------------------------------------------------------------------------------------------


def doc_param_count(c: WC.WanDiTConfig) -> tuple[int, int, int]:
    """(total, motion, tensors) from the document's tensor list (§3.1)."""
    d, f, lin = c.dim, c.ffn_dim, (lambda i, o: i * o + o)
    top = (lin(c.in_channels * c.patch_volume, d) + lin(c.text_dim, d) + lin(d, d)
           + lin(c.freq_dim, d) + lin(d, d) + lin(d, 6 * d))
    attn = 4 * lin(d, d) + 2 * d
    plain = 6 * d + attn + 2 * d + (attn + 2 * lin(d, d) + d) + lin(d, f) + lin(f, d)
    motion = 2 * d + attn
    head = 2 * d + lin(d, c.patch_volume * c.out_channels)
    img = 2 * c.image_dim + lin(c.image_dim, c.image_dim) + lin(c.image_dim, d) + 2 * d
    k = len(c.motion_blocks())
    tensors = 12 + c.num_layers * 32 + k * 12 + 3 + 8
    return top + c.num_layers * plain + k * motion + head + img, k * motion, tensors


def test_param_counts_tiny_and_17b(reference):
    tiny = W.param_counts(TINY)
    assert tiny == {"total": 7_782_720, "trainable": 528_384, "tensors_released": 207}
    assert sum(p.numel() for p in reference.parameters()) == 7_782_720
    assert len(reference.state_dict()) == 207
    full = W.param_counts("17b")       # jax.eval_shape: nothing is allocated
    assert full == {"total": 17_443_864_384, "trainable": 1_048_985_600,
                    "tensors_released": 1423}
    assert doc_param_count(WC.wan_config("17b")) == (17_443_864_384, 1_048_985_600, 1423)
    assert doc_param_count(TINY)[0] == 7_782_720
    # presets in the configs/mvdit.py shape round-trip through ConfigDict / JSON
    import ml_collections
    project = WC.project_config("tiny17b", remat="full")
    assert project["model"]["family"] == "wan" and project["remat"] == "full"
    assert W.from_config(ml_collections.ConfigDict(project)).config == WC.wan_config(TINY,
                                                                                   remat="full")
    assert WC.wan_config(json.loads(json.dumps(project))) == WC.wan_config(TINY, remat="full")
    # the Wan2.1-I2V-14B part, and a motion block vs a plain block (§1, §3.1)
    assert full["total"] - full["trainable"] == 16_394_878_784
    assert full["trainable"] // 10 == 104_898_560


def test_full_size_conversion_layout():
    """At the real size (shapes only, nothing allocated): the converter demands exactly the
    document's tensor shapes, 1,423 of them, and fills every scanned slot once."""
    cfg = WC.wan_config("17b")
    table = C.name_table(cfg)
    shapes = {k: v.shape for k, v in flax.traverse_util.flatten_dict(W.param_shapes(cfg)).items()}
    fake = TensorSource("fake", {e.source: C.RULES[e.rule].source_shapes(
        shapes[e.target][len(slot_of(e.index)):])[0] for e in table}, getters={})
    check_layout(fake.shapes, shapes, table, C.RULES, "fake",       # also: every slot filled
                 stacked=functools.partial(WC.stacked_axes, cfg))
    assert len(table) == 1423
    assert sum(int(np.prod(s)) for s in fake.shapes.values()) == 17_443_864_384
    doc = {"patch_embedding.weight": (5120, 36, 1, 2, 2), "text_embedding.0.weight": (5120, 4096),
           "time_embedding.0.weight": (5120, 256), "time_projection.1.weight": (30720, 5120),
           "blocks.39.modulation": (1, 6, 5120), "blocks.36.motion_attn.k.weight": (5120, 5120),
           "blocks.36.motion_attn.norm_q.weight": (5120,), "blocks.7.ffn.0.weight": (13824, 5120),
           "blocks.7.cross_attn.norm_k_img.weight": (5120,), "head.modulation": (1, 2, 5120),
           "head.head.weight": (64, 5120), "img_emb.proj.1.weight": (1280, 1280),
           "img_emb.proj.3.weight": (5120, 1280), "img_emb.proj.4.bias": (5120,)}
    assert {k: tuple(fake.shapes[k]) for k in doc} == doc
    assert "blocks.37.motion_attn.q.weight" not in fake.shapes
    assert WC.block_location(cfg, 36) == (("blocks", "motion_block"), (9,))
    assert WC.block_location(cfg, 39) == (("blocks", "plain"), (9, 2))
    assert "tail" not in W.param_shapes(cfg)


def test_released_names_and_order(reference):
    """The reference's state dict is the document's layout, and the name table lists exactly
    those keys, in order, with shapes the rules accept."""
    keys = list(reference.state_dict())
    table = C.name_table(TINY)
    assert [e.source for e in table] == keys
    assert sum(k.startswith("blocks.0.") for k in keys) == 44
    assert sum(k.startswith("blocks.1.") for k in keys) == 32
    assert "blocks.0.motion_attn.k.weight" in keys and "blocks.4.norm4.bias" in keys
    assert not any(k.startswith(("blocks.1.motion", "blocks.1.norm4")) for k in keys)


def test_scan_layout_and_stacking(converted, reference):
    shapes = jax.tree.map(lambda a: a.shape, converted)
    blocks, tail = shapes["blocks"], shapes["tail"]
    assert blocks["motion_block"]["self_attn"]["q"]["kernel"] == (1, 256, 2, 128)
    assert blocks["plain"]["ffn_0"]["kernel"] == (1, 3, 256, 512)
    assert "motion_attn" not in blocks["plain"] and "plain" not in tail
    assert tail["motion_block"]["motion_attn"]["o"]["kernel"] == (2, 128, 256)
    sd = state_dict_numpy(reference)
    for i in range(TINY.num_layers):
        prefix, index = WC.block_location(TINY, i)
        node = converted
        for p in prefix:
            node = node[p]
        q = np.asarray(node["self_attn"]["q"]["kernel"])[index]
        np.testing.assert_array_equal(q.reshape(256, 256).T, sd[f"blocks.{i}.self_attn.q.weight"])
        mod = np.asarray(node["modulation"])[index]
        np.testing.assert_array_equal(mod, sd[f"blocks.{i}.modulation"][0])
        if i % 4 == 0:
            o = np.asarray(node["motion_attn"]["o"]["kernel"])[index]
            np.testing.assert_array_equal(o.reshape(256, 256).T,
                                          sd[f"blocks.{i}.motion_attn.o.weight"])


def test_compiled_program_is_flat_in_depth():
    """The traced program does not grow with the number of layers (scan over groups)."""
    def size(layers):
        model = W.MVDiTWan(WC.wan_config(TINY, num_layers=layers))
        args = W.dummy_inputs(model.config)
        jaxpr = jax.make_jaxpr(lambda: model.init(jax.random.PRNGKey(0), *args))()
        return str(jaxpr).count(" = ")   # equations, nested ones included
    assert size(8) == size(40)


def test_logical_axes():
    specs = W.param_logical_axes(TINY)
    flat = flax.traverse_util.flatten_dict(specs)
    shapes = flax.traverse_util.flatten_dict(W.param_shapes(TINY))
    assert set(flat) == set(shapes)
    names = {n for spec in flat.values() for n in spec if n is not None}
    assert names == set(LOGICAL_AXES)
    for path, spec in flat.items():
        assert len(spec) == len(shapes[path].shape), path
        assert len([n for n in spec if n]) == len({n for n in spec if n}), path
    plain = specs["blocks"]["plain"]
    assert tuple(plain["self_attn"]["q"]["kernel"]) == ("layers", "sublayers", "embed", "heads",
                                                        "kv")
    assert tuple(plain["self_attn"]["o"]["kernel"]) == ("layers", "sublayers", "heads", "kv",
                                                        "embed")
    assert tuple(plain["ffn_0"]["kernel"]) == ("layers", "sublayers", "embed", "mlp")
    assert tuple(specs["tail"]["motion_block"]["motion_attn"]["norm_k"]["scale"]) == ("heads",
                                                                                      "kv")


def test_trainable_mask(converted):
    mask = W.trainable_mask(converted)
    assert jax.tree.structure(mask) == jax.tree.structure(converted)
    flat = flax.traverse_util.flatten_dict(mask)
    on = sorted("/".join(k) for k, v in flat.items() if v)
    assert on and all(("motion_attn" in p or "norm4" in p) for p in on)
    assert {p.split("/")[0] + "/" + p.split("/")[2] for p in on} == {
        "blocks/motion_attn", "blocks/norm4", "tail/motion_attn", "tail/norm4"}
    n = sum(int(np.prod(np.shape(v))) for k, v in
            flax.traverse_util.flatten_dict(converted).items() if flat[k])
    assert n == 528_384
    tx = optax.masked(optax.adam(1e-3), mask)        # the structure optax needs
    jax.eval_shape(tx.init, converted)
    assert W.trainable_mask({"uncond_motion_tokens": 0, "img_emb": {"proj_1": {"kernel": 0}}}) == {
        "uncond_motion_tokens": True, "img_emb": {"proj_1": {"kernel": False}}}


# ----------------------------------------------------------------------------------------------
# Parity with the PyTorch reference
# ----------------------------------------------------------------------------------------------


def test_parity_single_safetensors(converted, inputs, reference_out):
    out = run_jax(converted, inputs)
    assert out.shape == (B, F, H, WD, 16)
    err = rel_err(out, reference_out)
    print(f"\nparity vs torch reference (single file, Orbax round trip): {err:.2e}")
    assert err < TOL


@pytest.mark.parametrize("kernel", ["xla", "softmax", "chunked", "splash"])
def test_parity_per_attention_kernel(converted, inputs, reference_out, kernel):
    """The memory-bounded kernels reproduce the release too (splash: Pallas interpret mode;
    the masked text attention takes its chunked fallback)."""
    config = WC.wan_config(TINY, attention=kernel, attention_chunk=3, attention_kv_chunk=4)
    err = rel_err(run_jax(converted, inputs, config), reference_out)
    assert err < TOL, err


def test_parity_sharded_folder(tmp_path, reference, inputs, reference_out,
                                             converted):
    sd = {k: v.contiguous() for k, v in reference.state_dict().items()}
    keys = list(sd)
    shards = [keys[i::3] for i in range(3)]
    weight_map = {}
    for n, part in enumerate(shards):
        name = f"diffusion_pytorch_model-{n + 1:05d}-of-00003.safetensors"
        save_file({k: sd[k] for k in part}, str(tmp_path / name))
        weight_map.update({k: name for k in part})
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(dict(
        dim=256, ffn_dim=512, freq_dim=256, in_dim=36, num_heads=2, num_layers=5, out_dim=16,
        text_len=512, eps=1e-6, model_type="i2v")))
    config, params, report = C.convert_state_dict(tmp_path, "tiny17b")
    assert report["tensors"] == 207
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(converted)):
        np.testing.assert_array_equal(a, np.asarray(b))
    err = rel_err(run_jax(params, inputs), reference_out)
    print(f"parity vs torch reference (sharded folder): {err:.2e}")
    assert err < TOL
    # a torch.save'd state dict (weights_only load) and a bfloat16 safetensors file
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    _, from_pt, _ = C.convert_state_dict(tmp_path / "model.pt", "tiny17b")
    np.testing.assert_array_equal(from_pt["head"]["head"]["kernel"],
                                  np.asarray(converted["head"]["head"]["kernel"]))
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(tmp_path / "bf16.safetensors"))
    _, from_bf16, _ = C.convert_state_dict(tmp_path / "bf16.safetensors", "tiny17b")
    np.testing.assert_array_equal(
        from_bf16["img_emb"]["proj_1"]["kernel"],
        sd["img_emb.proj.1.weight"].to(torch.bfloat16).float().numpy().T)


def test_lora_merge_parity(tmp_path, reference, single_file, inputs):
    rng = np.random.default_rng(5)
    scale = 0.7
    targets = ["blocks.0.self_attn.q", "blocks.3.cross_attn.v_img", "blocks.4.ffn.0",
               "text_embedding.0", "blocks.2.ffn.2"]
    sd = state_dict_numpy(reference)
    lora, merged = {}, {k: v.copy() for k, v in sd.items()}
    for p in targets:
        out_f, in_f = sd[p + ".weight"].shape
        up = rng.normal(size=(out_f, 4)).astype(np.float32) * 0.1
        down = rng.normal(size=(4, in_f)).astype(np.float32) * 0.1
        lora[f"diffusion_model.{p}.lora_up.weight"] = up
        lora[f"diffusion_model.{p}.lora_down.weight"] = down
        lora[f"diffusion_model.{p}.alpha"] = np.array(4.0, np.float32)   # ignored (released)
        merged[p + ".weight"] += (up @ down) * np.float32(scale)
    diff_b = rng.normal(size=sd["blocks.1.cross_attn.k.bias"].shape).astype(np.float32)
    lora["diffusion_model.blocks.1.cross_attn.k.diff_b"] = diff_b
    merged["blocks.1.cross_attn.k.bias"] += diff_b * np.float32(scale)
    diff = rng.normal(size=sd["blocks.2.cross_attn.norm_k_img.weight"].shape).astype(np.float32)
    lora["diffusion_model.blocks.2.cross_attn.norm_k_img.diff"] = 0.1 * diff
    merged["blocks.2.cross_attn.norm_k_img.weight"] += 0.1 * diff * np.float32(scale)
    lora["diffusion_model.blocks.0.modulation.diff"] = np.ones((1, 6, 256), np.float32)  # no target
    lora["other.key"] = np.ones(3, np.float32)   # no prefix
    path = tmp_path / "lora.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in lora.items()}, str(path))

    config, params, report = C.convert_state_dict(single_file, "tiny17b", lora=path,
                                                  lora_scale=scale)
    assert report["lora_merged"] == len(targets) + 2
    assert report["lora_skipped"] == ["blocks.0.modulation.weight"]
    assert "other.key" in report["lora_ignored"]
    ref = T.Transformer17B(**T.TINY).eval()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in merged.items()})
    expected = run_reference(ref, inputs)
    err = rel_err(run_jax(params, inputs), expected)
    print(f"LoRA merge parity: {err:.2e}")
    assert err < TOL
    assert rel_err(expected, run_reference(reference, inputs)) > 1e-3   # the LoRA matters


# ----------------------------------------------------------------------------------------------
# Parity of the shared (Wan) parts with diffusers' WanTransformer3DModel
# ----------------------------------------------------------------------------------------------


def test_base_conversion_matches_diffusers(tmp_path, inputs):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(1)
    wan = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=36,
        out_channels=16, text_dim=64, freq_dim=256, ffn_dim=512, num_layers=5,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280,
        added_kv_proj_dim=256, rope_max_seq_len=1024).eval()
    T.randomize_(wan, seed=3)
    wan.save_pretrained(tmp_path / "wan", max_shard_size="3MB", safe_serialization=True)
    assert list((tmp_path / "wan").glob("*.index.json"))

    dst = tmp_path / "ckpt"
    summary = C.convert_wan_base(tmp_path / "wan", dst, variant="tiny17b", seed=0)
    assert summary["tensors"] == 207 - 24
    config, params = C.load_converted(dst)
    rng = np.random.default_rng(9)
    text = rng.normal(size=(B, 512, 64)).astype(np.float32)   # diffusers splits at 512 rows
    x = np.concatenate([inputs["x"], inputs["y"]], axis=1)
    t = np.array([3.0, 11.5], np.float32)
    with torch.no_grad():
        expected = wan(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(text),
                       torch.from_numpy(inputs["clip"]), return_dict=False)[0].numpy()
    expected = expected.transpose(0, 2, 3, 4, 1)
    assert config == TINY
    same = dict(inputs, t=t, text=text, text_lens=np.array([512, 512], np.int32))
    out = run_jax(params, same)          # motion_attn.o is zero-initialised: a no-op
    err = rel_err(out, expected)
    print(f"parity vs diffusers WanTransformer3DModel: {err:.2e}")
    assert err < TOL
    # fresh motion modules: random q/k/v, zero o, unit norms
    mb = params["blocks"]["motion_block"]
    assert np.abs(np.asarray(mb["motion_attn"]["q"]["kernel"])).max() > 0
    assert not np.asarray(mb["motion_attn"]["o"]["kernel"]).any()
    assert np.all(np.asarray(mb["norm4"]["scale"]) == 1)


# ----------------------------------------------------------------------------------------------
# Options: remat, bf16, unconditional motion tokens
# ----------------------------------------------------------------------------------------------


def test_remat_bf16_and_uncond_tokens(converted, inputs):
    """Options on a one-block model (the tail motion block as the only layer), with learnable
    unconditional motion tokens: a remat'ed float32 gradient step and a bfloat16 forward."""
    small = WC.wan_config(TINY, num_layers=1, motion_every=1, uncond_motion=True)
    assert small.num_uncond_motion_tokens == F * 24
    params = {k: v for k, v in converted.items() if k not in ("blocks", "tail")}
    params["blocks"] = jax.tree.map(lambda a: np.asarray(a)[None],
                                    {"motion_block": converted["tail"]["motion_block"]})
    params["uncond_motion_tokens"] = np.random.default_rng(2).normal(size=(48, 64)).astype(
        np.float32)
    x = np.concatenate([inputs["x"], inputs["y"]], 1).transpose(0, 2, 3, 4, 1)
    text = inputs["text"][:, :9]                       # shorter than text_len: zero-padded

    def forward(config, p, drop):
        return W.MVDiTWan(config).apply({"params": p}, x, inputs["t"], text, inputs["clip"],
                                        inputs["motion"], motion_drop=drop)

    # the remat policy is in the program; gradients reach the motion modules and, through the
    # dropped sample only, the unconditional tokens
    dots = WC.wan_config(small, remat="dots_saveable")
    jaxpr = str(jax.make_jaxpr(lambda p: forward(dots, p, None))(params))
    assert "remat" in jaxpr and "policy=DotsSaveable" in jaxpr
    full = WC.wan_config(small, remat="full")
    drop = np.array([True, False])
    mask = flax.traverse_util.flatten_dict(W.trainable_mask(params))
    flat = flax.traverse_util.flatten_dict(params)
    train = {k: v for k, v in flat.items() if mask[k]}         # the released training's subset
    frozen = {k: v for k, v in flat.items() if not mask[k]}

    def loss(train, frozen):
        out = forward(full, flax.traverse_util.unflatten_dict({**train, **frozen}), drop)
        return (out[1] ** 2).mean() + (out[0] ** 2).mean(), out
    grads, out_f32 = jax.jit(jax.grad(loss, has_aux=True))(train, frozen)
    assert float(jnp.abs(grads[("blocks", "motion_block", "motion_attn", "k", "kernel")]).max()) > 0
    assert float(jnp.abs(grads[("uncond_motion_tokens",)][:, :64]).max()) > 0
    assert all(bool(jnp.isfinite(g).all()) for g in grads.values())

    # bfloat16 compute, float32 params: close to float32; motion_drop swaps in the unconditional
    # tokens per sample
    call = jax.jit(functools.partial(forward, WC.wan_config(small, dtype="bfloat16")))
    mixed = np.asarray(call(params, drop))
    assert rel_err(mixed, out_f32) < 3e-2
    cond = np.asarray(call(params, np.array([False, False])))
    uncond = np.asarray(call(params, np.array([True, True])))
    np.testing.assert_array_equal(mixed[1], cond[1])
    np.testing.assert_array_equal(mixed[0], uncond[0])
    assert rel_err(cond[0], uncond[0]) > 1e-3
    with pytest.raises(ValueError, match="uncond_motion"):
        jax.eval_shape(lambda p: forward(WC.wan_config(small, uncond_motion=False), p, drop),
                       params)


def test_released_joint_positions(shared_data):
    """The embedded centred joints equal the dataset mean centred as released (§5.2)."""
    mean = np.load(shared_data / "mtvcrafter_sample" / "mean.npy").reshape(24, 3)
    np.testing.assert_array_equal(R.centre_joint_positions(mean), WC.RELEASED_CENTRED_JOINTS)
    a, b = W.released_motion_rope(13), R.wan_motion_rope(13, mean)
    np.testing.assert_array_equal(a.cos, b.cos)
    np.testing.assert_array_equal(a.sin, b.sin)


# ----------------------------------------------------------------------------------------------
# Conversion errors
# ----------------------------------------------------------------------------------------------


def _source(tensors: dict) -> TensorSource:
    return TensorSource("mem", {k: tuple(v.shape) for k, v in tensors.items()},
                        {k: (lambda k=k: tensors[k]) for k in tensors})


def test_conversion_errors_name_keys(reference, tmp_path):
    sd = state_dict_numpy(reference)
    bad = dict(sd)
    del bad["blocks.3.cross_attn.norm_k_img.weight"]
    bad["blocks.2.extra.weight"] = np.zeros(3, np.float32)
    bad["blocks.1.ffn.0.weight"] = np.zeros((512, 255), np.float32)
    with pytest.raises(C.ConversionError) as err:
        C.convert_state_dict(_source(bad), "tiny17b")
    msg = str(err.value)
    assert "missing keys: blocks.3.cross_attn.norm_k_img.weight" in msg
    assert "unused source keys: blocks.2.extra.weight" in msg
    assert "blocks.1.ffn.0.weight: shape (512, 255) in file, expected (512, 256)" in msg

    base = {k: v for k, v in sd.items() if not C.is_motion_key(k)}
    with pytest.raises(C.ConversionError, match="use convert_wan_base"):
        C.convert_state_dict(_source(base), "tiny17b")
    with pytest.raises(C.ConversionError, match="use convert_mvdit17b"):
        C.convert_state_dict(_source(sd), "tiny17b", base=True)
    with pytest.raises(C.ConversionError, match="dim: file 256, variant 5120"):
        C.convert_state_dict(_source(sd), "17b")
    config, _, _ = C.convert_state_dict(_source(sd), None)      # inferred from shapes
    assert (config.dim, config.num_heads, config.num_layers, config.motion_every) == (256, 2, 5, 4)

    path = tmp_path / "bad_lora.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 256)},
              str(path))
    with pytest.raises(C.ConversionError, match="blocks.0.self_attn.q"):
        C.convert_state_dict(_source(sd), "tiny17b", lora=path)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "x").write_text("")
    with pytest.raises(FileExistsError):
        C.convert_mvdit17b(tmp_path / "none.safetensors", dst)
