"""Scaled-dot-product kernels, the kernel registry, QK norms and the linen Attention module."""
from __future__ import annotations

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtvjax.models.layers import attention as A
from mtvjax.models.layers import norms as N
from mtvjax.models.layers import rope as R


def _naive_attention(q, k, v, mask=None, bias=None):
    """softmax(q·kᵀ/√d + bias)·v in float64 numpy, on [B, T, N, H]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    p = p / p.sum(axis=-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


def _numpy_rope(x, table):
    """Interleaved rotation from the reference's full repeat-interleaved cos/sin tables."""
    cos, sin = R.rope_table_to_full(table, R.INTERLEAVED)
    x = np.asarray(x, np.float64)
    rot = np.stack([-x[..., 1::2], x[..., 0::2]], axis=-1).reshape(x.shape)
    return x * cos[None, :, None] + rot * sin[None, :, None]


def _np_layer_norm(x, p, eps=1e-6):
    x = np.asarray(x, np.float64)
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return y * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _np_rms_norm(x, p, eps=1e-6):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * np.asarray(p["scale"])


def _dense(x, p):
    return np.asarray(x, np.float64) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"])


def _randn(shape, seed=0, scale=1.0, offset=0.0):
    """Test inputs from numpy (eager jax.random compiles threefry, which is slow on CPU)."""
    x = np.random.default_rng(seed).normal(size=shape) * scale + offset
    return jnp.asarray(x.astype(np.float32))


def _qkv(shape_q, shape_kv, seed=0):
    return _randn(shape_q, seed), _randn(shape_kv, seed + 1), _randn(shape_kv, seed + 2)


def _param_shapes(module, *args):
    """The `params` tree of `module.init(key, *args)` as ShapeDtypeStructs, without running it."""
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))["params"]


def _init(module, *args, seed=0):
    """Random parameters of `module`: kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.3²),
    norm scales ~ 1 + N(0, 0.3²)."""
    flat = flax.traverse_util.flatten_dict(_param_shapes(module, *args))
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in flat.items():
        x = rng.normal(size=leaf.shape)
        if path[-1] == "kernel":
            x = x / np.sqrt(leaf.shape[0])
        elif path[-1] == "scale":
            x = 1.0 + 0.3 * x
        else:
            x = 0.3 * x
        out[path] = jnp.asarray(x.astype(np.float32))
    return flax.traverse_util.unflatten_dict(out)


# ------------------------------------------------------------------------------------------------
# dot_product_attention and the registry
# ------------------------------------------------------------------------------------------------


class DotProductAttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_naive_numpy(self):
        q, k, v = _qkv((2, 5, 3, 8), (2, 7, 3, 8))
        mask = np.random.default_rng(0).random((2, 1, 5, 7)) > 0.3
        mask[..., 0] = True  # every query keeps at least one key
        bias = np.random.default_rng(1).normal(size=(1, 3, 5, 7)).astype(np.float32)
        impls = ("xla", "auto", "softmax", "reference")

        @self.variant
        def run(q, k, v, mask, bias):
            return {impl: (A.dot_product_attention(q, k, v, implementation=impl),
                           A.dot_product_attention(q, k, v, mask=mask, bias=bias,
                                                   implementation=impl)) for impl in impls}

        expected = (_naive_attention(q, k, v), _naive_attention(q, k, v, mask, bias))
        for impl, outs in run(q, k, v, mask, bias).items():
            chex.assert_shape(outs, (2, 5, 3, 8))
            for out, ref in zip(outs, expected):
                np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5, err_msg=impl)
        for m, b in ((mask, None), (None, bias)):
            np.testing.assert_allclose(A.dot_product_attention(q, k, v, mask=m, bias=b),
                                       _naive_attention(q, k, v, m, b), rtol=1e-5, atol=1e-5)

    def test_scale_and_dtype(self):
        q, k, v = _qkv((1, 4, 2, 16), (1, 6, 2, 16), seed=1)
        out = A.dot_product_attention(q, k, v, scale=1.0)
        np.testing.assert_allclose(out, _naive_attention(q * 4.0, k, v), rtol=1e-5, atol=1e-5)
        out16 = A.dot_product_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)))
        assert out16.dtype == jnp.bfloat16
        np.testing.assert_allclose(out16.astype(np.float32), _naive_attention(q, k, v), atol=5e-2)


def test_registry_dispatch():
    calls = []

    def fake(q, k, v, *, bias=None, mask=None, scale=None):
        calls.append((q.shape, k.shape))
        return jnp.zeros_like(q)

    A.register_attention_implementation("test_fake", fake, overwrite=True)
    assert "test_fake" in A.available_attention_implementations()
    assert {"auto", "xla", "cudnn", "reference", "softmax", "chunked", "splash"} <= set(
        A.available_attention_implementations())
    with pytest.raises(ValueError):
        A.register_attention_implementation("test_fake", fake)
    with pytest.raises(ValueError):
        A.dot_product_attention(*_qkv((1, 2, 1, 4), (1, 2, 1, 4)), implementation="nope")

    module = A.Attention(num_heads=2, head_dim=4, implementation="test_fake")
    x = jnp.ones((1, 3, 8))
    params = _init(module, x, jnp.ones((1, 5, 6)))
    out = module.apply({"params": params}, x, jnp.ones((1, 5, 6)))
    assert calls[-1] == ((1, 3, 2, 4), (1, 5, 2, 4))
    chex.assert_trees_all_close(out, jnp.broadcast_to(params["to_out"]["bias"], out.shape))


# ------------------------------------------------------------------------------------------------
# Norms
# ------------------------------------------------------------------------------------------------


def test_norms_match_numpy_and_keep_dtype():
    x = _randn((2, 3, 16), seed=5, scale=3.0, offset=1.0)
    for cls, ref in ((N.LayerNorm, _np_layer_norm), (N.RMSNorm, _np_rms_norm)):
        module = cls()
        params = _init(module, x)
        out = module.apply({"params": params}, x)
        np.testing.assert_allclose(out, ref(x, params), rtol=1e-5, atol=1e-5)
        assert module.apply({"params": params}, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------------
# Attention module
# ------------------------------------------------------------------------------------------------


def _shapes(module, *args):
    return {k: v.shape for k, v in
            flax.traverse_util.flatten_dict(_param_shapes(module, *args), sep=".").items()}


def test_parameter_names_mirror_reference():
    heads, hd = 2, 16
    x = jnp.ones((1, 3, 32))
    cog = A.cogvideox_attention(heads, hd)
    assert _shapes(cog, x) == {
        **{f"{n}.kernel": (32, 32) for n in ("to_q", "to_k", "to_v", "to_out")},
        **{f"{n}.bias": (32,) for n in ("to_q", "to_k", "to_v", "to_out")},
        "norm_q.scale": (hd,), "norm_q.bias": (hd,), "norm_k.scale": (hd,), "norm_k.bias": (hd,),
    }  # 7B §2: norm_q/norm_k are [head_dim], shared by all heads
    wan = A.wan_attention(heads, hd, motion=True)
    assert _shapes(wan, x, jnp.ones((1, 4, 32))) == {
        **{f"{n}.kernel": (32, 32) for n in "qkvo"},
        **{f"{n}.bias": (32,) for n in "qkvo"},
        "norm_q.scale": (32,), "norm_k.scale": (32,),
    }  # 17B §3.1: RMSNorm weights over the full width
    plain = A.Attention(num_heads=heads, head_dim=hd, use_bias=False, out_bias=False,
                        out_features=8)
    shapes = _shapes(plain, x)
    assert shapes == {"to_q.kernel": (32, 32), "to_k.kernel": (32, 32), "to_v.kernel": (32, 32),
                      "to_out.kernel": (32, 8)}


class AttentionModuleTest(chex.TestCase):

    @chex.variants(with_jit=True)
    def test_cogvideox_motion_cross_attention_matches_numpy(self):
        """7B attn0: per-head LN on q and k, vision RoPE on q, motion RoPE on k, v untouched."""
        heads, hd, frames, gh, gw = 2, 64, 2, 2, 2
        width, n_motion = heads * hd, frames * 24
        x = _randn((2, frames * gh * gw, width), seed=10)
        motion = _randn((2, n_motion, width), seed=11)
        q_table = R.cogvideox_vision_rope(frames, gh, gw, hd)
        k_table = R.cogvideox_motion_rope(frames, np.random.default_rng(0).normal(
            size=(24, 3)).astype(np.float32) * 300, hd)
        module = A.cogvideox_attention(heads, hd)
        params = _init(module, x, motion, seed=2)
        out = self.variant(lambda p, x, c: module.apply({"params": p}, x, c, q_rope=q_table,
                                                        k_rope=k_table))(params, x, motion)
        chex.assert_shape(out, x.shape)

        split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, hd)
        q = _numpy_rope(_np_layer_norm(split(_dense(x, params["to_q"])), params["norm_q"]), q_table)
        k = _numpy_rope(_np_layer_norm(split(_dense(motion, params["to_k"])), params["norm_k"]),
                        k_table)
        v = split(_dense(motion, params["to_v"]))
        o = _naive_attention(q, k, v).reshape(2, -1, width)
        np.testing.assert_allclose(out, _dense(o, params["to_out"]), rtol=2e-4, atol=2e-4)

    @chex.variants(with_jit=True)
    def test_wan_motion_attention_matches_numpy(self):
        """17B motion_attn: full-width RMSNorm, heads-major key split, key RoPE indexed by slot."""
        heads, hd, frames = 2, 128, 1
        width, n_motion = heads * hd, frames * 24
        x = _randn((1, 6, width), seed=12)
        motion = _randn((1, n_motion, width), seed=13)
        q_table = R.wan_vision_rope(frames, 2, 3, hd)
        k_table = R.wan_motion_rope(frames, np.random.default_rng(1).normal(
            size=(24, 3)).astype(np.float32) * 300, hd)
        module = A.wan_attention(heads, hd, motion=True)
        params = _init(module, x, motion, seed=5)
        out = self.variant(lambda p, x, c: module.apply({"params": p}, x, c, q_rope=q_table,
                                                        k_rope=k_table))(params, x, motion)

        q = _numpy_rope(_np_rms_norm(_dense(x, params["q"]), params["norm_q"]).reshape(
            1, 6, heads, hd), q_table)
        k_lin = _np_rms_norm(_dense(motion, params["k"]), params["norm_k"])  # [1, M, D]
        # 17B §2.3: key slot j of head h = chunk (h·M + j) mod n of token ⌊(h·M + j)/n⌋.
        k = np.empty((1, n_motion, heads, hd))
        for h in range(heads):
            for j in range(n_motion):
                r = h * n_motion + j
                c, m = r % heads, r // heads
                k[0, j, h] = k_lin[0, m, c * hd:(c + 1) * hd]
        k = _numpy_rope(k, k_table)
        v = _dense(motion, params["v"]).reshape(1, n_motion, heads, hd)
        o = _naive_attention(q, k, v).reshape(1, 6, width)
        np.testing.assert_allclose(out, _dense(o, params["o"]), rtol=2e-4, atol=2e-4)

    def test_self_attention_rope_mask_and_cross_shapes(self):
        heads, hd = 2, 16
        x = _randn((2, 6, 24), seed=14)
        table = R.rope_table_1d(np.arange(6), hd)
        module = A.Attention(num_heads=heads, head_dim=hd, qk_norm="rms_norm",
                             qk_norm_scope="head", naming="wan")
        params = _init(module, x, seed=7)
        assert params["norm_q"]["scale"].shape == (hd,)
        apply = jax.jit(lambda p, x, rope, q_rope: module.apply({"params": p}, x, rope=rope,
                                                                 q_rope=q_rope))
        out = apply(params, x, table, table)
        split = lambda a: a.reshape(2, 6, heads, hd)
        q = _numpy_rope(_np_rms_norm(split(_dense(x, params["q"])), params["norm_q"]), table)
        k = _numpy_rope(_np_rms_norm(split(_dense(x, params["k"])), params["norm_k"]), table)
        ref = _dense(_naive_attention(q, k, split(_dense(x, params["v"]))).reshape(2, 6, -1),
                     params["o"])
        np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4)
        # q_rope overrides rope on the query side only.
        shifted = R.rope_table_1d(np.arange(6) + 3, hd)
        q_shifted = _numpy_rope(_np_rms_norm(split(_dense(x, params["q"])), params["norm_q"]),
                                shifted)
        ref_shifted = _dense(_naive_attention(q_shifted, k, split(_dense(x, params["v"]))).reshape(
            2, 6, -1), params["o"])
        np.testing.assert_allclose(apply(params, x, table, shifted), ref_shifted, rtol=2e-4,
                                   atol=2e-4)

        # Cross-attention: different lengths and widths; masked keys have no influence.
        ctx = _randn((2, 9, 40), seed=15)
        cross = A.Attention(num_heads=heads, head_dim=hd, out_features=12)
        cparams = {"params": _init(cross, x, ctx, seed=9)}
        mask = jnp.arange(9)[None, None, None, :] < 5
        capply = jax.jit(lambda p, x, c, m: cross.apply(p, x, c, mask=m))
        out1 = capply(cparams, x, ctx, mask)
        chex.assert_shape(out1, (2, 6, 12))
        out2 = capply(cparams, x, ctx.at[:, 5:].set(100.0), mask)
        chex.assert_trees_all_close(out1, out2, atol=1e-5)
        out3 = capply(cparams, x, jnp.concatenate([ctx[:, :5], ctx[:, :4]], 1),
                      jnp.ones((1, 1, 1, 9), bool) & mask)
        chex.assert_trees_all_close(out1, out3, atol=1e-5)


def test_split_heads_layouts():
    x = jnp.arange(2 * 5 * 6).reshape(2, 5, 6)  # 3 heads of width 2, 5 tokens
    natural = A.split_heads(x, 3)
    np.testing.assert_array_equal(natural[1, 4, 2], x[1, 4, 4:6])
    scrambled = np.asarray(A.split_heads(x, 3, heads_major=True))
    chex.assert_shape(scrambled, (2, 5, 3, 2))
    for h in range(3):
        for j in range(5):
            r = h * 5 + j
            chunk = (r % 3) * 2
            np.testing.assert_array_equal(scrambled[:, j, h],
                                          np.asarray(x)[:, r // 3, chunk:chunk + 2])
