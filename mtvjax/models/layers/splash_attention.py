"""TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`): the `"splash"` kernel.

Unmasked, unbiased attention (the MV-DiT self-attention, the 17B text/image cross-attention and
the unmasked motion attention) runs the Pallas splash kernel per example (`vmap` over the batch)
with query blocks of `chunk` and key blocks of `kv_chunk` (0: `chunk`), forward and backward
alike, each rounded up to a multiple of 128 (the kernel's lane width; it refuses anything else,
in interpret mode too) and capped at the padded sequence. T and S are zero-padded to a whole number of blocks; padded keys sit in their own segment
(`SegmentIds`), so real queries never see them. Calls with a `bias` or a `mask` (the 7B motion
attention with its key mask, ISA) use `chunked_attention` with the same chunk sizes instead.

On TPU the kernel is compiled by Mosaic; on CPU it runs in the Pallas interpreter (slow; for
parity tests); on GPU it is refused. It is a `pallas_call`, which XLA's partitioner cannot
split: under a mesh (`activation_sharding`) `attention.dot_product_attention` runs it per device
in a `shard_map` over batch and heads (`mtvjax.parallel.context_attention`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from mtvjax.models.layers.chunked_attention import chunked_attention

LANE = 128   # splash blocks are whole TPU lanes (checked in interpret mode too)


def splash_attention(q, k, v, *, bias=None, mask=None, scale: float | None = None,
                     chunk: int = 512, kv_chunk: int = 0,
                     interpret: bool | None = None) -> jax.Array:
    """Splash attention on `[B, T, N, H]` q and `[B, S, N, H]` k, v (module docstring).

    `interpret` None: the Pallas interpreter on CPU, Mosaic on TPU.
    """
    if bias is not None or mask is not None:
        return chunked_attention(q, k, v, bias=bias, mask=mask, scale=scale, chunk=chunk,
                                 kv_chunk=kv_chunk)
    backend = jax.default_backend()
    if interpret is None:
        if backend not in ("tpu", "cpu"):
            raise ValueError(f"splash attention is a TPU kernel; backend is {backend!r} "
                             "(use attention 'auto' or 'chunked')")
        interpret = backend == "cpu"
    b, t, n, h = q.shape
    s = k.shape[1]
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    block_q = _block(chunk if chunk > 0 else 512, t)
    block_kv = _block(kv_chunk if kv_chunk > 0 else block_q, s)
    t_pad, s_pad = _round_up(t, block_q), _round_up(s, block_kv)
    sizes = splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_q_dkv=block_q,
                              block_kv_dkv=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([splash.FullMask((t_pad, s_pad))] * n), block_sizes=sizes,
        head_shards=1, q_seq_shards=1, interpret=interpret)

    def heads_first(x, length):   # [B, L, N, H] → zero-padded [B, N, L_pad, H]
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    q_p = heads_first((q * scale).astype(q.dtype), t_pad)
    k_p, v_p = heads_first(k, s_pad), heads_first(v, s_pad)
    if s_pad == s:
        out = jax.vmap(kernel)(q_p, k_p, v_p)
    else:
        segments = splash.SegmentIds(q=jnp.zeros((t_pad,), jnp.int32),
                                     kv=(jnp.arange(s_pad) >= s).astype(jnp.int32))
        out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(q_p, k_p, v_p, segments)
    return out.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _block(size: int, length: int) -> int:
    """`size` rounded up to whole lanes, but no larger than `length` rounded up to them."""
    return _round_up(min(size, length), LANE)
