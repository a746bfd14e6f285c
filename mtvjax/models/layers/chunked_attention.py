"""Memory-bounded scaled-dot-product attention in plain JAX (any backend): the `"chunked"` kernel.

Queries are processed `chunk` at a time (`lax.map`), each chunk under `jax.checkpoint`, so the
backward pass keeps one chunk's `[B, N, chunk, S]` scores instead of the whole `[B, N, T, S]`.
With `kv_chunk > 0` each query chunk also walks the keys `kv_chunk` at a time with an online
softmax (running max, normaliser and output; each key step rematerialised as well), so neither
pass holds more than `[B, N, chunk, kv_chunk]` scores. T and S need not be multiples of the
chunks: the last chunk is zero-padded and padded keys get no weight. Scores and softmax are
float32; the two matmuls take the inputs' dtype with float32 accumulation.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def chunked_attention(q, k, v, *, bias=None, mask=None, scale: float | None = None,
                      chunk: int = 512, kv_chunk: int = 0) -> jax.Array:
    """softmax(q·kᵀ·scale + bias, masked)·v on `[B, T, N, H]` q and `[B, S, N, H]` k, v.

    `bias` (additive) and `mask` (bool, True = attend) are 4-D, broadcastable to `[B, N, T, S]`.
    `chunk` queries per rematerialised step (<= 0: all); `kv_chunk` keys per online-softmax
    step (<= 0: all keys at once).
    """
    t = q.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    chunk = t if chunk <= 0 else min(chunk, t)
    count = -(-t // chunk)
    # bias / mask get their query axis made explicit so they can be cut with the queries
    extras = tuple(None if x is None else jnp.broadcast_to(x, x.shape[:2] + (t, x.shape[3]))
                   for x in (bias, mask))

    @jax.checkpoint
    def one(args):
        qc, bias_c, mask_c = args
        return _attend(qc, k, v, bias_c, mask_c, scale, kv_chunk)

    out = jax.lax.map(one, (_split(q, 1, chunk, count),
                            *(None if x is None else _split(x, 2, chunk, count) for x in extras)))
    out = jnp.moveaxis(out, 0, 1)                        # [B, count, chunk, N, H]
    return out.reshape(out.shape[0], count * chunk, *out.shape[3:])[:, :t]


def _split(x, axis: int, size: int, count: int):
    """Zero-pads `axis` to `size·count` and returns `[count, ..., size, ...]` (chunks first)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size * count - x.shape[axis])
    x = jnp.pad(x, pad)
    x = x.reshape(x.shape[:axis] + (count, size) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _scores(q, k, bias, mask, scale):
    """float32 `[B, N, T, S]` logits with the bias added and masked entries at the float32 min."""
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return logits


def _weighted(p, v):
    return jnp.einsum("bnts,bsnh->btnh", p.astype(v.dtype), v, preferred_element_type=jnp.float32)


def _attend(q, k, v, bias, mask, scale, kv_chunk):
    """One query chunk against all keys, whole or `kv_chunk` keys at a time (online softmax)."""
    s = k.shape[1]
    if kv_chunk <= 0 or kv_chunk >= s:
        probs = jax.nn.softmax(_scores(q, k, bias, mask, scale), axis=-1)
        return _weighted(probs, v).astype(q.dtype)

    count = -(-s // kv_chunk)
    keyed = tuple(None if x is None else jnp.broadcast_to(x, x.shape[:3] + (s,))
                  for x in (bias, mask))

    @jax.checkpoint
    def step(carry, xs):
        top, total, acc = carry
        k_j, v_j, bias_j, mask_j, start = xs
        logits = _scores(q, k_j, bias_j, mask_j, scale)
        real = start + jnp.arange(kv_chunk) < s          # padded keys get no weight
        logits = jnp.where(real, logits, -jnp.inf)
        # the result does not depend on the running max, so no gradient flows through it
        new_top = jax.lax.stop_gradient(jnp.maximum(top, logits.max(-1)))
        p = jnp.exp(logits - new_top[..., None])
        decay = jnp.exp(top - new_top)
        total = total * decay + p.sum(-1)
        acc = acc * jnp.moveaxis(decay, 1, 2)[..., None] + _weighted(p, v_j)
        return (new_top, total, acc), None

    b, t, n, h = q.shape
    init = (jnp.full((b, n, t), -jnp.inf, jnp.float32), jnp.zeros((b, n, t), jnp.float32),
            jnp.zeros((b, t, n, h), jnp.float32))
    xs = (_split(k, 1, kv_chunk, count), _split(v, 1, kv_chunk, count),
          *(None if x is None else _split(x, 3, kv_chunk, count) for x in keyed),
          jnp.arange(count) * kv_chunk)
    (_, total, acc), _ = jax.lax.scan(step, init, xs)
    return (acc / jnp.moveaxis(total, 1, 2)[..., None]).astype(q.dtype)
