"""Multi-head attention for MV-DiT: a pluggable scaled-dot-product kernel and a linen module.

`dot_product_attention` works on `[batch, seq, heads, head_dim]` and dispatches through a small
registry, by a name or an `AttentionKernel` (a name plus chunk sizes; the model configs build one
from `attention[_implementation]`, `attention_chunk`, `attention_kv_chunk`). Built-in names:

* ``"auto"`` (default): the platform's memory-bounded choice. On GPU, cuDNN flash attention
  (``jax.nn.dot_product_attention``) when the inputs are bf16/fp16 with head_dim a multiple of 8
  up to 128. Otherwise, while the float32 score buffer ``[B, N, T, S]`` stays under
  `AUTO_SCORES_BYTES` (256 MiB): ``"softmax"`` on CPU, plain XLA on TPU and GPU; above it
  ``"chunked"``, so long clips never materialise whole score matrices (on TPU, ``"splash"`` is
  the faster fused kernel: select it by name). In jax 0.10 ``implementation=None`` means plain
  XLA, hence the explicit choice.
* ``"xla"`` / ``"cudnn"``: ``jax.nn.dot_product_attention`` with that implementation forced.
* ``"softmax"``: exact attention in the head-major layout with a hand-written backward
  (`softmax_attention`; faster than ``"xla"`` on XLA:CPU).
* ``"reference"``: an explicit einsum + float32 softmax, for debugging and parity tests.
* ``"chunked"``: portable memory-bounded attention (`chunked_attention`): `chunk` queries at a
  time, each rematerialised in the backward pass; `kv_chunk` > 0 adds an online softmax over key
  chunks.
* ``"splash"``: the TPU Pallas splash kernel (`splash_attention`) with `chunk` / `kv_chunk` as
  its query / key blocks; masked or biased calls use ``"chunked"``.

More kernels are registered with `register_attention_implementation` before the first jit trace
(the registry is read at trace time). A kernel receives those `AttentionKernel` options
(`chunk`, `kv_chunk`) that its signature names.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtvjax.models.layers.chunked_attention import chunked_attention
from mtvjax.models.layers.norms import LayerNorm, RMSNorm
from mtvjax.models.layers.rope import INTERLEAVED, RopeTable, apply_rope
from mtvjax.models.layers.softmax_attention import softmax_attention
from mtvjax.models.layers.splash_attention import splash_attention
from mtvjax.parallel.context_attention import context_attention

AttentionFn = Callable[..., jax.Array]

DEFAULT_IMPLEMENTATION = "auto"
UNPARTITIONABLE = {"splash"}   # kernels XLA cannot split over a mesh: run per device (shard_map)
_IMPLEMENTATIONS: dict[str, AttentionFn] = {}


@dataclasses.dataclass(frozen=True)
class AttentionKernel:
    """A registered kernel name with its options (hashable, so it can be a module attribute).

    chunk: queries per step ("chunked") / query block ("splash"); <= 0: all queries.
    kv_chunk: keys per online-softmax step ("chunked") / key block ("splash"); 0: all keys
      ("chunked"), `chunk` ("splash").
    """

    name: str = DEFAULT_IMPLEMENTATION
    chunk: int = 512
    kv_chunk: int = 0

    @classmethod
    def create(cls, implementation: "str | AttentionKernel | None") -> "AttentionKernel":
        if isinstance(implementation, cls):
            return implementation
        return cls(DEFAULT_IMPLEMENTATION if implementation is None else implementation)


def register_attention_implementation(name: str, fn: AttentionFn | None = None, *,
                                      overwrite: bool = False):
    """Registers `fn(q, k, v, *, bias, mask, scale) -> out` under `name`; usable as a decorator.

    q is `[B, T, N, H]`, k/v `[B, S, N, H]`; bias (additive) and mask (bool, True = attend) are
    broadcastable to `[B, N, T, S]`; scale defaults to 1/sqrt(H). Returns `[B, T, N, H]`. Keyword
    parameters named like `AttentionKernel` options (`chunk`, `kv_chunk`) receive them.
    """
    def register(f: AttentionFn) -> AttentionFn:
        if name in _IMPLEMENTATIONS and not overwrite:
            raise ValueError(f"attention implementation {name!r} is already registered")
        _IMPLEMENTATIONS[name] = f
        return f

    return register if fn is None else register(fn)


def get_attention_implementation(name: str | None = None) -> AttentionFn:
    """The function registered under `name` (None → `DEFAULT_IMPLEMENTATION`)."""
    name = DEFAULT_IMPLEMENTATION if name is None else name
    try:
        return _IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown attention implementation {name!r}; "
                         f"registered: {sorted(_IMPLEMENTATIONS)}") from None


def available_attention_implementations() -> tuple[str, ...]:
    return tuple(sorted(_IMPLEMENTATIONS))


def dot_product_attention(q, k, v, *, bias=None, mask=None, scale: float | None = None,
                          implementation: str | AttentionKernel | None = None,
                          context_parallel: str | None = None) -> jax.Array:
    """softmax(q·kᵀ·scale + bias, masked) · v per head, on `[batch, seq, heads, head_dim]`.

    `mask` is boolean (True = attend) and, like `bias`, 4-D broadcastable to
    `[batch, heads, q_seq, kv_seq]`. `implementation` names a registered kernel or is an
    `AttentionKernel` (module docstring). `context_parallel` marks the queries as the video tokens
    that context parallelism shards (`mtvjax.parallel.context_attention`): "self" (k/v are the
    same tokens) or "cross" (k/v are another, replicated sequence); no mask or bias then.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError("expected [batch, seq, heads, head_dim], got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    kernel = AttentionKernel.create(implementation)
    fn = get_attention_implementation(kernel.name)
    accepted = inspect.signature(fn).parameters
    options = {f.name: getattr(kernel, f.name) for f in dataclasses.fields(kernel)
               if f.name != "name" and f.name in accepted}
    manual = kernel.name in UNPARTITIONABLE and mask is None and bias is None
    if context_parallel is None and not manual:
        return fn(q, k, v, bias=bias, mask=mask, scale=scale, **options)
    if context_parallel not in (None, "self", "cross") or mask is not None or bias is not None:
        raise ValueError(f"context_parallel={context_parallel!r}: expected 'self' or 'cross', "
                         "without mask or bias")
    return context_attention(lambda q, k, v: fn(q, k, v, scale=scale, **options), q, k, v,
                             keys_sharded=context_parallel == "self", manual=manual,
                             queries_sharded=context_parallel is not None)


def _jax_sdpa(implementation):
    def fn(q, k, v, *, bias=None, mask=None, scale=None):
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                            implementation=implementation)
    return fn


def _cudnn_supported(q, k, v) -> bool:
    head_dim = q.shape[-1]
    return (jax.default_backend() == "gpu"
            and q.dtype in (jnp.bfloat16, jnp.float16)
            and q.dtype == k.dtype == v.dtype
            and head_dim % 8 == 0 and head_dim <= 128)


AUTO_SCORES_BYTES = 256 * 2 ** 20   # "auto": largest [B, N, T, S] float32 score buffer for XLA


def _auto(q, k, v, *, bias=None, mask=None, scale=None, chunk: int = 512, kv_chunk: int = 0):
    if _cudnn_supported(q, k, v):
        try:  # shape/feature checks raise at trace time; fall back below then
            return _jax_sdpa("cudnn")(q, k, v, bias=bias, mask=mask, scale=scale)
        except (NotImplementedError, ValueError, RuntimeError):
            pass
    (b, t, n, _), s = q.shape, k.shape[1]
    if b * n * t * s * 4 > AUTO_SCORES_BYTES:
        return chunked_attention(q, k, v, bias=bias, mask=mask, scale=scale, chunk=chunk,
                                 kv_chunk=kv_chunk)
    if jax.default_backend() == "cpu":
        return softmax_attention(q, k, v, bias=bias, mask=mask, scale=scale)
    return _jax_sdpa("xla")(q, k, v, bias=bias, mask=mask, scale=scale)


def _reference(q, k, v, *, bias=None, mask=None, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = jnp.einsum("btnh,bsnh->bnts", q.astype(jnp.float32), k.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bnts,bsnh->btnh", probs, v.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
    return out.astype(q.dtype)


register_attention_implementation("auto", _auto)
register_attention_implementation("xla", _jax_sdpa("xla"))
register_attention_implementation("cudnn", _jax_sdpa("cudnn"))
register_attention_implementation("reference", _reference)
register_attention_implementation("chunked", chunked_attention)
register_attention_implementation("softmax", softmax_attention)
register_attention_implementation("splash", splash_attention)


# ----------------------------------------------------------------------------------------------
# Attention module
# ----------------------------------------------------------------------------------------------

PROJECTION_NAMES = {
    "diffusers": ("to_q", "to_k", "to_v", "to_out"),  # 7B: to_out ↔ torch `to_out.0`
    "wan": ("q", "k", "v", "o"),                      # 17B
}
QK_NORMS = {"layer_norm": LayerNorm, "rms_norm": RMSNorm}


class Attention(nn.Module):
    """Self-attention (`context=None`) or cross-attention (q from `x`, k/v from `context`).

    Projections are Dense layers with torch-mirroring names (`PROJECTION_NAMES[naming]`); the
    optional QK norms are `norm_q` / `norm_k`, with a `scale` (torch `weight`) and, for LayerNorm,
    a `bias`. Order: project → full-width QK norm → head split → per-head QK norm → RoPE →
    SDPA → merge heads (channel = head·head_dim + i) → output projection. v is never normed or
    rotated.

    Attributes:
      qk_norm: None, "layer_norm" or "rms_norm".
      qk_norm_scope: "head" (over head_dim, one weight shared by all heads; 7B, §2 table) or
        "full" (over all num_heads·head_dim channels before the split; 17B §2.3, §4).
      key_head_layout: "natural" splits k as [seq, heads, head_dim]. "heads_major" reproduces the
        released 17B motion attention (17B §2.3): each batch row of k is reinterpreted as
        [heads, seq, head_dim], so key slot j of head h is channel chunk (h·M + j) mod n of token
        ⌊(h·M + j)/n⌋. v always uses the natural split.
      implementation: registered SDPA kernel name or `AttentionKernel` (None → "auto").
    """

    num_heads: int
    head_dim: int
    out_features: int | None = None
    use_bias: bool = True
    out_bias: bool = True
    qk_norm: str | None = None
    qk_norm_scope: str = "head"
    qk_norm_eps: float = 1e-6
    naming: str = "diffusers"
    key_head_layout: str = "natural"
    rope_layout: str = INTERLEAVED
    implementation: str | AttentionKernel | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros

    def _dense(self, features, name, use_bias):
        return nn.Dense(features, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision, kernel_init=self.kernel_init,
                        bias_init=self.bias_init, name=name)

    def _norm(self, name):
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"unknown qk_norm {self.qk_norm!r}; "
                             f"expected one of {sorted(QK_NORMS)}")
        return QK_NORMS[self.qk_norm](epsilon=self.qk_norm_eps, param_dtype=self.param_dtype,
                                      name=name)

    @nn.compact
    def __call__(self, x, context=None, *, rope: RopeTable | None = None,
                 q_rope: RopeTable | None = None, k_rope: RopeTable | None = None,
                 mask=None, bias=None):
        """x `[B, T, C]`, context `[B, S, C_kv]` (default x) → `[B, T, out_features or C]`.

        `rope` rotates q and k; `q_rope` / `k_rope` override it per side (the 7B motion
        cross-attention rotates q with the vision table and k with the motion table, 7B §3.3.3).
        `mask` (bool, True = attend) and `bias` are broadcastable to `[B, heads, T, S]`.
        """
        if self.naming not in PROJECTION_NAMES:
            raise ValueError(f"unknown naming {self.naming!r}; expected {sorted(PROJECTION_NAMES)}")
        if self.qk_norm_scope not in ("head", "full"):
            raise ValueError(f"unknown qk_norm_scope {self.qk_norm_scope!r}")
        if self.key_head_layout not in ("natural", "heads_major"):
            raise ValueError(f"unknown key_head_layout {self.key_head_layout!r}")
        q_name, k_name, v_name, o_name = PROJECTION_NAMES[self.naming]
        context = x if context is None else context
        inner = self.num_heads * self.head_dim

        q = self._dense(inner, q_name, self.use_bias)(x)
        k = self._dense(inner, k_name, self.use_bias)(context)
        v = self._dense(inner, v_name, self.use_bias)(context)

        norm_q = norm_k = None
        if self.qk_norm is not None:
            norm_q, norm_k = self._norm("norm_q"), self._norm("norm_k")
        if norm_q is not None and self.qk_norm_scope == "full":
            q, k = norm_q(q), norm_k(k)

        q = split_heads(q, self.num_heads)
        k = split_heads(k, self.num_heads, heads_major=self.key_head_layout == "heads_major")
        v = split_heads(v, self.num_heads)

        if norm_q is not None and self.qk_norm_scope == "head":
            q, k = norm_q(q), norm_k(k)

        q_rope = rope if q_rope is None else q_rope
        k_rope = rope if k_rope is None else k_rope
        if q_rope is not None:
            q = apply_rope(q, q_rope, self.rope_layout)
        if k_rope is not None:
            k = apply_rope(k, k_rope, self.rope_layout)

        out = dot_product_attention(q, k, v, bias=bias, mask=mask,
                                    implementation=self.implementation)
        out = out.reshape(*out.shape[:2], inner)
        return self._dense(self.out_features or x.shape[-1], o_name, self.out_bias)(out)


def split_heads(x, num_heads: int, heads_major: bool = False):
    """`[B, S, n·d]` → `[B, S, n, d]`; `heads_major` reads each row's memory as `[n, S, d]`."""
    batch, seq, width = x.shape
    head_dim = width // num_heads
    if heads_major:
        return x.reshape(batch, num_heads, seq, head_dim).transpose(0, 2, 1, 3)
    return x.reshape(batch, seq, num_heads, head_dim)


def cogvideox_attention(num_heads: int, head_dim: int = 64, **kwargs) -> Attention:
    """MV-DiT-7B attn0/attn1 (7B §2, §3.3): biased to_q/to_k/to_v/to_out, per-head affine
    LayerNorm eps 1e-6 on q and k, interleaved RoPE."""
    defaults = dict(qk_norm="layer_norm", qk_norm_scope="head", qk_norm_eps=1e-6,
                    naming="diffusers", rope_layout=INTERLEAVED)
    return Attention(num_heads=num_heads, head_dim=head_dim, **{**defaults, **kwargs})


def wan_attention(num_heads: int, head_dim: int = 128, *, motion: bool = False,
                  **kwargs) -> Attention:
    """MV-DiT-17B self_attn / motion_attn (17B §2.3, §4): biased q/k/v/o, RMSNorm eps 1e-6 over
    the full width on q and k, interleaved RoPE; `motion=True` adds the released heads-major key
    split."""
    defaults = dict(qk_norm="rms_norm", qk_norm_scope="full", qk_norm_eps=1e-6, naming="wan",
                    rope_layout=INTERLEAVED, key_head_layout="heads_major" if motion else "natural")
    return Attention(num_heads=num_heads, head_dim=head_dim, **{**defaults, **kwargs})
