"""The "chunked" and "splash" attention kernels against "reference", alone and inside tiny models."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from mtvjax.models.layers import attention as A
from mtvjax.models.layers.chunked_attention import chunked_attention
from mtvjax.models.layers.splash_attention import splash_attention
from mtvjax.models.mvdit.cogvideox import model as mv7
from mtvjax.models.mvdit.wan import config as WC
from mtvjax.models.mvdit.wan import model as W


def _inputs(b, t, s, n, h, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(ks[0], (b, t, n, h))
    k, v = (jax.random.normal(key, (b, s, n, h)) for key in ks[1:3])
    bias = jax.random.normal(ks[3], (1, n, t, s))
    mask = jax.random.bernoulli(ks[4], 0.7, (b, 1, 1, s)).at[:, :, :, 0].set(True)
    return q, k, v, bias, mask


def _value_and_grads(fn, q, k, v):
    def loss(q, k, v):
        out = fn(q, k, v)
        return (out * jnp.cos(out)).sum(), out
    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _assert_close(fn, q, k, v, tol=1e-5, **extras):
    """Output and q/k/v gradients within `tol` of "reference", relative to each one's largest
    magnitude (measured: below 3e-6 for every kernel here)."""
    out, grads = _value_and_grads(lambda *a: fn(*a, **extras), q, k, v)
    want, want_grads = _value_and_grads(lambda *a: A._reference(*a, **extras), q, k, v)
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), (want, *want_grads)):
        err = float(np.abs(np.asarray(got) - np.asarray(ref)).max() / np.abs(ref).max())
        assert err < tol, (name, err)


@pytest.mark.parametrize("kv_chunk", [0, 5])
@pytest.mark.parametrize("extras", ["none", "bias", "mask", "both"])
def test_chunked_matches_reference(kv_chunk, extras):
    q, k, v, bias, mask = _inputs(2, 37, 23, 3, 8)          # 37 = 4·8 + 5, 23 = 4·5 + 3
    kw = dict(none={}, bias=dict(bias=bias), mask=dict(mask=mask),
              both=dict(bias=bias, mask=mask))[extras]
    kernel = A.AttentionKernel("chunked", chunk=8, kv_chunk=kv_chunk)
    _assert_close(lambda *a, **e: A.dot_product_attention(*a, implementation=kernel, **e),
                  q, k, v, **kw)


def test_chunked_gradient_does_not_hold_all_scores():
    """Compiled gradient temporaries: well under the reference's [B, N, T, S] scores."""
    b, t, n, h = 1, 2048, 2, 8
    x = jax.ShapeDtypeStruct((b, t, n, h), jnp.float32)

    def temp_bytes(fn):
        grad = jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2))
        return jax.jit(grad).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    scores = b * n * t * t * 4
    assert temp_bytes(A._reference) >= scores
    assert temp_bytes(lambda q, k, v: chunked_attention(q, k, v, chunk=64)) < scores / 4
    assert temp_bytes(lambda q, k, v: chunked_attention(q, k, v, chunk=64,
                                                        kv_chunk=256)) < scores / 4


def test_auto_switches_to_chunked_above_the_score_budget(monkeypatch):
    """"auto" on CPU: plain XLA while [B, N, T, S] float32 scores fit `AUTO_SCORES_BYTES`,
    query chunks above it (same values, gradient temporaries well under one score buffer)."""
    b, t, n, h = 1, 2048, 2, 8
    x = jax.ShapeDtypeStruct((b, t, n, h), jnp.float32)
    scores = b * n * t * t * 4

    def temp_bytes():
        auto = A.AttentionKernel("auto", chunk=64)
        grad = jax.grad(lambda q, k, v: A.dot_product_attention(q, k, v, implementation=auto)
                        .sum(), argnums=(0, 1, 2))
        return jax.jit(grad).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    assert scores < A.AUTO_SCORES_BYTES and temp_bytes() >= scores
    monkeypatch.setattr(A, "AUTO_SCORES_BYTES", scores - 1)
    assert temp_bytes() < scores / 4
    monkeypatch.setattr(A, "AUTO_SCORES_BYTES", 0)
    q, k, v, bias, mask = _inputs(2, 37, 23, 3, 8)
    _assert_close(lambda *a, **e: A.dot_product_attention(*a, **e), q, k, v, bias=bias, mask=mask)


@pytest.mark.parametrize("self_attention", [True, False])
def test_splash_interpret_matches_reference(self_attention):
    """Pallas interpret mode on CPU; T, S padded to the 128-wide blocks (key padding masked)."""
    q, k, v, bias, mask = _inputs(1, 200, 50, 2, 8)
    if self_attention:
        k, v = q, jnp.flip(q, 1)
    _assert_close(lambda *a: splash_attention(*a, chunk=128, kv_chunk=128, interpret=True),
                  q, k, v)
    if not self_attention:   # masked / biased calls take the chunked path
        _assert_close(lambda *a, **e: splash_attention(*a, chunk=64, interpret=True, **e), q, k,
                      v, bias=bias, mask=mask)


def _perturbed(params, scale=0.05):
    """Random offsets, so zero-initialised outputs (motion attention) take part."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys)])


def test_tiny_7b_chunked_equals_reference():
    def model_for(name):
        config = load_config("mvdit.py", "tiny")
        config.model.attention_implementation = name
        config.model.attention_chunk = 5
        config.model.attention_kv_chunk = 7
        return mv7.from_config(config)

    chunked, reference = model_for("chunked"), model_for("reference")
    assert chunked.attention_implementation == A.AttentionKernel("chunked", 5, 7)
    params = _perturbed(mv7.init_params(reference, jax.random.PRNGKey(0)))
    ks = jax.random.split(jax.random.PRNGKey(2), 2)
    inputs = dict(latents=jax.random.normal(ks[0], (1, 2, 6, 4, reference.in_channels)),
                  timesteps=jnp.array([300]),
                  motion_tokens=jax.random.normal(ks[1], (1, 48, reference.width)))
    got, want = (m.apply({"params": params}, **inputs) for m in (chunked, reference))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_tiny_17b_chunked_equals_reference():
    configs = {name: WC.wan_config("tiny17b", attention=name, attention_chunk=3,
                                   attention_kv_chunk=4) for name in ("chunked", "reference")}
    assert configs["chunked"].attention_kernel == A.AttentionKernel("chunked", 3, 4)
    model = W.MVDiTWan(configs["reference"])
    params = _perturbed(W.init_params(configs["reference"], jax.random.PRNGKey(0)))
    cfg = configs["reference"]
    ks = jax.random.split(jax.random.PRNGKey(2), 4)
    args = (jax.random.normal(ks[0], (1, 2, 4, 4, cfg.in_channels)), jnp.array([300.0]),
            jax.random.normal(ks[1], (1, 5, cfg.text_dim)),
            jax.random.normal(ks[2], (1, 3, cfg.image_dim)),
            jax.random.normal(ks[3], (1, 2 * cfg.num_joints, cfg.motion_dim)))
    want = model.apply({"params": params}, *args)
    got = W.MVDiTWan(configs["chunked"]).apply({"params": params}, *args)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
