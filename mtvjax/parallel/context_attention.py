"""Context (sequence) parallelism for attention over the video tokens: Ulysses all-to-all.

The logical axis `sequence` (the video tokens of an MV-DiT) maps to the `context` mesh axis in
`config.sharding_rules`; the model pins its residual stream to `("batch", "sequence", None)`
(`sharding.constrain`), so every device holds T / C tokens (C = context size) of every layer.
Attention is the one place that needs all tokens. `context_attention` runs it as a
`jax.shard_map` over the active mesh (`sharding.activation_sharding`):

* self-attention (`keys_sharded=True`): one all-to-all turns each of q, k, v from
  "T/C tokens × all local heads" into "all T tokens × local heads / C", the per-device kernel
  attends, and one all-to-all turns the output back;
* cross-attention (`keys_sharded=False`: motion, text, CLIP image): queries stay sequence-sharded
  and the short key/value sequences are replicated, so each device attends for its own queries
  with no communication.

Why Ulysses and not ring attention: each device runs ordinary attention over the full key
sequence for a subset of heads, so the result is the exact softmax of one kernel call (no
partial-softmax merging), any registered per-device kernel (`auto`/cuDNN, `chunked`, `splash`)
plugs in unchanged, and the cost is four all-to-alls of activations (q, k, v, out) per layer,
independent of the number of devices. Its limit is that heads (after tensor parallelism) must
divide by C; ring attention, which passes key/value blocks around the devices, is only needed
beyond that (C > heads / tensor: 48 heads in the 7B, 40 in the 17B).

Outside `activation_sharding`, or with C = 1, `context_attention` is the plain kernel call,
except for kernels XLA cannot partition (`manual=True`: the Pallas splash call), which then run
under the same `shard_map` with the tokens whole and only batch and heads split.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import jax
from jax.sharding import PartitionSpec

from mtvjax.errors import ConfigError
from mtvjax.parallel.sharding import Rules, active_rules, logical_to_spec

SEQUENCE = "sequence"      # logical name of the video-token axis of activations


def _flat(entry) -> tuple[str, ...]:
    return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def _size(axes: tuple[str, ...], sizes: Mapping[str, int]) -> int:
    """Devices along these mesh axes (an axis the mesh lacks counts 1)."""
    return math.prod(sizes.get(a, 1) for a in axes)


def check_heads(num_heads: int, mesh_sizes: Mapping[str, int], rules: Rules) -> None:
    """Refuses a mesh whose context size (× the tensor size sharding the heads) does not divide
    the attention heads: Ulysses hands each context device whole heads."""
    spec = logical_to_spec(("batch", SEQUENCE, "heads", None), rules)
    context = _size(_flat(spec[1]), mesh_sizes)
    tensor = _size(_flat(spec[2]), mesh_sizes)
    if context > 1 and num_heads % (context * tensor):
        raise ConfigError(f"config.model.num_heads={num_heads} must be a multiple of the context "
                          f"size {context} × the head-sharding (tensor) size {tensor}: choose "
                          "config.mesh.context (and config.mesh.tensor) accordingly")


def context_attention(attend: Callable, q, k, v, *, keys_sharded: bool,
                      manual: bool = False, queries_sharded: bool = True) -> jax.Array:
    """`attend(q, k, v)` (`[B, T, N, H]` in and out) with the video tokens T sharded over the
    context mesh axes; k/v carry the same tokens (`keys_sharded`) or a replicated sequence.
    `manual`: `attend` must see per-device blocks even without context sharding;
    `queries_sharded=False`: q is not the video (never split over context)."""
    rules = active_rules()
    if rules is None:
        return attend(q, k, v)
    sizes = dict(jax.sharding.get_abstract_mesh().shape)
    batch, seq, heads, _ = logical_to_spec(("batch", SEQUENCE, "heads", None), rules)
    context = _flat(seq)
    c = _size(context, sizes) if queries_sharded else 1
    if c == 1 and not manual:
        return attend(q, k, v)
    b, t, n, _ = q.shape
    if t % c:
        raise ValueError(f"{t} video tokens do not split over the context size {c}: choose "
                         "config.mesh.context dividing frames × (height/patch) × (width/patch)")
    if n % (c * _size(_flat(heads), sizes)):
        raise ValueError(f"{n} attention heads do not split over context {c} × the head "
                         f"sharding {_size(_flat(heads), sizes)}")
    batch = batch if b % _size(_flat(batch), sizes) == 0 else None   # else: replicated
    seq = seq if c > 1 else None
    q_spec = PartitionSpec(batch, seq, heads, None)
    kv_spec = q_spec if keys_sharded else PartitionSpec(batch, None, heads, None)

    def body(q, k, v):
        if not keys_sharded or c == 1:
            return attend(q, k, v)
        # [B, T/C, N, H] → [B, T, N/C, H]: gather the tokens, scatter the heads, and back.
        q, k, v = (jax.lax.all_to_all(x, context, 2, 1, tiled=True) for x in (q, k, v))
        return jax.lax.all_to_all(attend(q, k, v), context, 1, 2, tiled=True)

    # check_vma=False: kernels written for one device (scan carries created inside, Pallas
    # calls) need not track which mesh axes their values vary over.
    return jax.shard_map(body, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v)
