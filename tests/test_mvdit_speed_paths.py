"""The speed paths of the MV-DiT step: the custom-backward softmax attention kernel, tanh-GELU
and LayerNorm equal the plain maths (values and gradients), `scan_unroll` leaves parameters and outputs
unchanged, and the bench profiler reads op times and HLO metadata at a tiny size."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtvjax.bench import mvdit_profile as P
from mtvjax.models.layers.activations import gelu_tanh
from mtvjax.models.layers.attention import dot_product_attention
from mtvjax.models.layers.norms import layer_norm_f32
from mtvjax.models.layers.softmax_attention import softmax_attention
from mtvjax.models.mvdit.cogvideox import model as mv


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _qkvg(seed=0, t=5, s=7):
    rng = np.random.default_rng(seed)
    shapes = [(2, t, 3, 16), (2, s, 3, 16), (2, s, 3, 16), (2, t, 3, 16)]
    return [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in shapes]


@pytest.mark.parametrize("case", ["plain", "mask", "bias", "scale"])
def test_softmax_attention_matches_reference(case):
    q, k, v, g = _qkvg()
    rng = np.random.default_rng(1)
    kw = {}
    if case == "mask":
        mask = rng.random((2, 1, 5, 7)) > 0.4
        mask[..., 0] = True                                   # every query sees a key
        kw["mask"] = jnp.asarray(mask)
    if case == "bias":
        kw["bias"] = jnp.asarray(rng.normal(size=(1, 3, 5, 7)), jnp.float32)
    if case == "scale":
        kw["scale"] = 0.3

    def run(fn):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kw), q, k, v)
        return out, vjp(g)
    out, grads = run(softmax_attention)
    ref_out, ref_grads = run(lambda *a, **o: dot_product_attention(*a, implementation="reference",
                                                                     **o))
    assert rel_err(out, ref_out) < 1e-5
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) < 1e-5


def test_softmax_attention_under_jit_cross_lengths():
    q, k, v, g = _qkvg(seed=2, t=9, s=4)
    loss = lambda fn: (lambda q, k, v: jnp.sum(fn(q, k, v) * g))   # noqa: E731
    got = jax.jit(jax.grad(loss(softmax_attention), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(lambda *a: dot_product_attention(*a, implementation="reference")),
                    argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-5


def test_gelu_tanh_matches_jax_gelu():
    x = jnp.linspace(-12.0, 12.0, 2001, dtype=jnp.float32)
    np.testing.assert_allclose(gelu_tanh(x), jax.nn.gelu(x, approximate=True), rtol=1e-6,
                               atol=1e-7)
    got = jax.grad(lambda x: jnp.sum(jnp.sin(x) * gelu_tanh(x)))(x)
    want = jax.grad(lambda x: jnp.sum(jnp.sin(x) * jax.nn.gelu(x, approximate=True)))(x)
    # Both float32 forms cancel in 1 + tanh for x < -4: each is ~4e-6 off the float64 value.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_backward_matches_autodiff(dtype):
    """`layer_norm_f32`'s hand-written backward (saved output and 1/σ) equals autodiff of the
    plain formula, through the float32 cast of a bf16 input too."""
    def plain(x, eps=1e-6):
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        return (xf - mean) * jax.lax.rsqrt(jnp.square(xf - mean).mean(-1, keepdims=True) + eps)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(2, 7, 48)), dtype)
    g = jnp.asarray(rng.normal(size=(2, 7, 48)), jnp.float32)
    out, vjp = jax.vjp(layer_norm_f32, x)
    want, want_vjp = jax.vjp(plain, x)
    assert rel_err(out, want) < 1e-6
    got_grad, want_grad = vjp(g)[0], want_vjp(g)[0]
    assert got_grad.dtype == dtype
    assert rel_err(got_grad.astype(jnp.float32), want_grad.astype(jnp.float32)) < (
        1e-5 if dtype == jnp.float32 else 1e-2)


def _tiny(**fields):
    return mv.MVDiTCogVideoX(num_layers=2, num_heads=2, head_dim=16, time_embed_dim=32,
                             text_embed_dim=0, uncond_motion_shape=None, **fields)


def test_scan_unroll_keeps_params_and_numerics():
    scanned, unrolled = _tiny(), _tiny(scan_unroll=8)
    params = mv.init_params(scanned, jax.random.PRNGKey(0))
    same = mv.init_params(unrolled, jax.random.PRNGKey(0))
    assert jax.tree.structure(params) == jax.tree.structure(same)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    x = dict(latents=jnp.asarray(rng.normal(size=(1, 2, 4, 4, 32)), jnp.float32),
             timesteps=jnp.array([300]),
             motion_tokens=jnp.asarray(rng.normal(size=(1, 48, 32)), jnp.float32))

    def loss(model, p):
        return jnp.mean(model.apply({"params": p}, **x) ** 2)
    (l1, g1), (l2, g2) = (jax.value_and_grad(lambda p, m=m: loss(m, p))(params)
                          for m in (scanned, unrolled))
    assert rel_err(l2, l1) < 1e-5
    flat = [np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)]) for g in (g2, g1)]
    assert rel_err(*flat) < 1e-5
    with pytest.raises(ValueError, match="scan_unroll"):
        mv.init_params(_tiny(scan_unroll=0), jax.random.PRNGKey(0))


def test_profile_reads_op_times_and_metadata():
    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w) ** 2)

    @jax.jit
    def step(w, x):
        return w - 0.1 * jax.grad(loss)(w, x)
    w, x = jnp.ones((64, 64)) * 0.01, jnp.ones((32, 64))
    compiled = step.lower(w, x).compile()
    text = compiled.as_text()
    metadata = P.op_metadata(text)
    counts = P.hlo_counts(text)
    assert set(counts) == set(P.COUNTED_OPCODES) and counts["dot"] + counts["fusion"] > 0

    def run():
        compiled(w, x).block_until_ready()
    run()
    seconds = P.trace_op_seconds(run, 2)
    assert seconds and all(s >= 0 for s in seconds.values())
    assert set(seconds) <= set(metadata)
    rows = P.op_table(seconds, metadata)
    assert abs(sum(r.share for r in rows) - 1.0) < 1e-6
    assert {r.phase for r in rows} <= {"forward", "backward", "other"}
    lines = P.summary_lines(rows, counts, top=3)
    assert lines[-1].startswith("  HLO ops: transpose")
    assert P.phase_of("jit(f)/transpose(jvp(M))/blocks/x") == "backward"
    assert P.phase_of("jit(f)/jvp(M)/blocks/x") == "forward"
    assert P.short_path("jit(f)/jvp(M)/while/body/closed_call/blocks/block_0/ff/dot") == \
        "blocks/block_0/ff/dot"
