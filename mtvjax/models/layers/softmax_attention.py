"""Exact (whole-row softmax) attention with a hand-written backward pass, for CPU.

`softmax_attention(q, k, v, *, bias, mask, scale)` is the registry contract of
`mtvjax.models.layers.attention` (q `[B, T, N, H]`, k/v `[B, S, N, H]`). It computes in the
head-major layout `[B, N, T, H]` that batched matmuls take without copies, and its
`jax.custom_vjp` backward is the textbook one:

    dv = pᵀ·do,  dp = do·vᵀ,  ds = p ⊙ (dp − rowsum(do ⊙ o)),  dq = ds·k·scale,  dk = dsᵀ·q·scale

with the transposed products written as `(·)ᵀ` of an untransposed one (XLA:CPU runs
`[H, T]·[T, S]` about 1.5× faster than `[S, T]ᵀ·[T, H]`). Autodiff of the plain softmax
formulation instead keeps the [T, S] exponentials, the max and the sum as separate residuals and
runs two extra passes over them. At the MV-DiT bench's shapes (q, k, v `[1, 832, 8, 64]`, 2 CPU
cores) this kernel's forward is ~2.5× and its forward + backward ~1.4× faster than
`jax.nn.dot_product_attention(implementation="xla")`.

The probabilities `p` `[B, N, T, S]` are kept for the backward pass (as autodiff would): use the
"chunked" kernel when that does not fit. An additive `bias` goes through autodiff of the same
maths (no custom backward), a boolean `mask` (True = attend) through the custom one.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _probabilities(q, k, mask):
    """softmax(q·kᵀ) over the keys, `[B, N, T, S]` float32 (q already scaled)."""
    logits = jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    logits = logits - jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits)
    return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


def _forward(q, k, v, mask, scale):
    p = _probabilities(q * jnp.asarray(scale, q.dtype), k, mask)
    out = jnp.einsum("bnts,bnsh->bnth", p.astype(v.dtype), v)
    return out, p


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, mask, scale):
    return _forward(q, k, v, mask, scale)[0]


def _attention_fwd(q, k, v, mask, scale):
    out, p = _forward(q, k, v, mask, scale)
    return out, (q, k, v, mask, p, out)


def _attention_bwd(scale, residuals, d_out):
    q, k, v, mask, p, out = residuals
    dtype = q.dtype
    d_out32 = d_out.astype(jnp.float32)
    dv = jnp.einsum("bnth,bnts->bnhs", d_out, p.astype(dtype)).swapaxes(-1, -2)
    dp = jnp.einsum("bnth,bnsh->bnts", d_out, v, preferred_element_type=jnp.float32)
    delta = jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1, keepdims=True)
    ds = (p * (dp - delta)).astype(dtype)
    dq = jnp.einsum("bnts,bnsh->bnth", ds, k) * jnp.asarray(scale, dtype)
    dk = jnp.einsum("bnth,bnts->bnhs", q, ds).swapaxes(-1, -2) * jnp.asarray(scale, dtype)
    d_mask = None if mask is None else jnp.zeros(mask.shape, jax.dtypes.float0)
    return dq, dk, dv.astype(v.dtype), d_mask


_attention.defvjp(_attention_fwd, _attention_bwd)


def softmax_attention(q, k, v, *, bias=None, mask=None, scale=None):
    """softmax(q·kᵀ·scale + bias, masked)·v on `[B, T, N, H]` inputs (module docstring)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q, k, v = (a.swapaxes(1, 2) for a in (q, k, v))
    if mask is not None:
        mask = jnp.asarray(mask, bool)
    if bias is None:
        out = _attention(q, k, v, mask, scale)
    else:
        logits = jnp.einsum("bnth,bnsh->bnts", q * jnp.asarray(scale, q.dtype), k,
                            preferred_element_type=jnp.float32) + bias.astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        out = jnp.einsum("bnts,bnsh->bnth", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    return out.swapaxes(1, 2)
