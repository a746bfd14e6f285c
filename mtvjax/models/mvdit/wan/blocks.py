"""Building blocks of the Wan-2.1-based MV-DiT-17B (docs/reference/mvdit17b.md §2.3, §4).

Every parameter carries LOGICAL axis names through `nn.with_logical_partitioning`, so a sharding
config maps them to mesh axes (`mtvjax.parallel.sharding.logical_to_spec`); unsharded, the boxes are
inert (`flax.linen.unbox` strips them). Names used here (`LOGICAL_AXES`):

* ``embed``   model width D (residual stream, norms, modulation);
* ``heads``, ``kv``   attention heads n and head_dim d: q/k/v kernels are `[D_in, n, d]`, o
  kernels `[n, d, D]`, q/k RMSNorm scales `[n, d]`;
* ``mlp``     hidden width of the FFN and of the time/text embedding MLPs, and the 6·D modulation
  output of `time_projection`;
* ``layers`` / ``sublayers``  the scan axes (groups of blocks / plain blocks inside a group),
  added by `nn.scan(metadata_params=...)` in `mvdit_wan`;
* None    small input-feature axes (patch vector, sinusoid, CLIP width, text width, head output)
  that are never worth sharding.

Attention kernels mirror the released projections (Linear with bias, stored torch-style [out, in]);
the converter reshapes `[n·d, D]` to `[D, n, d]`, channel = head·d + i (17B §2.3 "Merge the heads").
Norms compute in float32 and cast back, as the released WanLayerNorm / WanRMSNorm do (§4 dtypes).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtvjax.models.layers.attention import dot_product_attention
from mtvjax.models.layers.norms import LayerNorm, RMSNorm, layer_norm_f32
from mtvjax.models.layers.rope import INTERLEAVED, RopeTable, apply_rope

LOGICAL_AXES = ("embed", "heads", "kv", "mlp", "layers", "sublayers")

default_kernel_init = nn.linear.default_kernel_init


def partitioned(init: Callable, axes: tuple) -> Callable:
    return nn.with_logical_partitioning(init, axes)


# ----------------------------------------------------------------------------------------------
# Projections
# ----------------------------------------------------------------------------------------------


def heads_proj(num_heads: int, head_dim: int, name: str, *, dtype, param_dtype, precision,
               in_axis: str | None = "embed") -> nn.DenseGeneral:
    """Linear `[.., D_in] -> [.., n, d]` with bias (q/k/v, k_img/v_img)."""
    return nn.DenseGeneral(
        (num_heads, head_dim), axis=-1, use_bias=True, dtype=dtype, param_dtype=param_dtype,
        precision=precision,
        kernel_init=partitioned(default_kernel_init, (in_axis, "heads", "kv")),
        bias_init=partitioned(nn.initializers.zeros, ("heads", "kv")), name=name)


def out_proj(features: int, name: str, *, dtype, param_dtype, precision,
             kernel_init: Callable = default_kernel_init,
             bias_init: Callable = nn.initializers.zeros) -> nn.DenseGeneral:
    """Linear `[.., n, d] -> [.., D]` with bias (o)."""
    return nn.DenseGeneral(
        features, axis=(-2, -1), use_bias=True, dtype=dtype, param_dtype=param_dtype,
        precision=precision, kernel_init=partitioned(kernel_init, ("heads", "kv", "embed")),
        bias_init=partitioned(bias_init, ("embed",)), name=name)


def dense(features: int, name: str, axes: tuple, *, dtype, param_dtype, precision,
          kernel_init: Callable = default_kernel_init) -> nn.Dense:
    """Linear with bias; `axes` = (input axis name, output axis name)."""
    return nn.Dense(features, use_bias=True, dtype=dtype, param_dtype=param_dtype,
                    precision=precision, kernel_init=partitioned(kernel_init, axes),
                    bias_init=partitioned(nn.initializers.zeros, (axes[1],)), name=name)


# ----------------------------------------------------------------------------------------------
# Attention modules (released names: q, k, v, o, norm_q, norm_k[, k_img, v_img, norm_k_img])
# ----------------------------------------------------------------------------------------------


class _WanAttentionBase(nn.Module):
    num_heads: int
    head_dim: int
    epsilon: float = 1e-6
    implementation: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    def _proj(self, name, in_axis="embed"):
        return heads_proj(self.num_heads, self.head_dim, name, dtype=self.dtype,
                          param_dtype=self.param_dtype, precision=self.precision, in_axis=in_axis)

    def _norm(self, name):
        return RMSNorm(self.epsilon, num_axes=2, logical_axes=("heads", "kv"),
                       param_dtype=self.param_dtype, name=name)

    def _out(self, features, name="o", **kw):
        return out_proj(features, name, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision, **kw)

    def _sdpa(self, q, k, v):
        return dot_product_attention(q, k, v, implementation=self.implementation)


class WanSelfAttention(_WanAttentionBase):
    """Self-attention (§4 step 6.1): full-width RMSNorm on q and k, vision RoPE on q and k."""

    @nn.compact
    def __call__(self, x, rope: RopeTable):
        q = self._norm("norm_q")(self._proj("q")(x))
        k = self._norm("norm_k")(self._proj("k")(x))
        v = self._proj("v")(x)
        q, k = apply_rope(q, rope, INTERLEAVED), apply_rope(k, rope, INTERLEAVED)
        return self._out(x.shape[-1])(self._sdpa(q, k, v))


class WanI2VCrossAttention(_WanAttentionBase):
    """Text + CLIP-image cross-attention (§4 step 6.2): one q (RMSNorm), two separate softmax
    attentions (text k/v with norm_k; image k_img/v_img with norm_k_img), per-head outputs summed,
    then o once. No RoPE, no mask (padded text rows are attended, as released)."""

    @nn.compact
    def __call__(self, x, text, image):
        q = self._norm("norm_q")(self._proj("q")(x))
        k = self._norm("norm_k")(self._proj("k")(text))
        v = self._proj("v")(text)
        out = self._sdpa(q, k, v)
        if image is not None:
            k_img = self._norm("norm_k_img")(self._proj("k_img")(image))
            v_img = self._proj("v_img")(image)
            out = out + self._sdpa(q, k_img, v_img)
        return self._out(x.shape[-1])(out)


class WanMotionAttention(_WanAttentionBase):
    """Released 4D motion attention (§2.3), without its pre-norm and residual.

    q: RMSNorm over the full width, natural head split, vision RoPE. k: RMSNorm over the full
    width, then each batch row is reread heads-major (`[M, n·d]` memory as `[n, M, d]`, the released
    defect reproduced by default), and slot j is rotated with row j of the motion table. v: natural
    split, no norm, no RoPE. `heads_major_keys=False` is the "fixed" variant (natural split; not
    the released weights' layout). The motion tokens arrive already padded to D (§2.4). A None
    table leaves q or k unrotated; `k_rope` may be per example `[B, M, d/2]` (`motion_pe`)."""

    heads_major_keys: bool = True
    out_kernel_init: Callable = default_kernel_init
    out_bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, motion, q_rope: RopeTable, k_rope: RopeTable):
        q = self._norm("norm_q")(self._proj("q")(x))
        k = self._norm("norm_k")(self._proj("k")(motion))
        v = self._proj("v")(motion)
        if self.heads_major_keys:
            batch, seq, heads, head_dim = k.shape
            k = k.reshape(batch, heads, seq, head_dim).transpose(0, 2, 1, 3)
        if q_rope is not None:   # None: not rotated (motion_pe "none" / "learnable")
            q = apply_rope(q, q_rope, INTERLEAVED)
        if k_rope is not None:
            k = apply_rope(k, k_rope, INTERLEAVED)
        return self._out(x.shape[-1], kernel_init=self.out_kernel_init,
                         bias_init=self.out_bias_init)(self._sdpa(q, k, v))


class WanMotionBranch(nn.Module):
    """`norm4` (affine LN) + `motion_attn`, as the motion block holds them; used standalone to
    initialise fresh motion modules (base-model conversion) with the block's parameter names."""

    num_heads: int
    head_dim: int
    epsilon: float = 1e-6
    heads_major_keys: bool = True
    implementation: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None
    out_kernel_init: Callable = default_kernel_init

    @nn.compact
    def __call__(self, x, motion, q_rope: RopeTable, k_rope: RopeTable):
        h = LayerNorm(self.epsilon, logical_axes=("embed",), param_dtype=self.param_dtype,
                      name="norm4")(x)
        out = WanMotionAttention(
            self.num_heads, self.head_dim, self.epsilon, self.implementation, self.dtype,
            self.param_dtype, self.precision, heads_major_keys=self.heads_major_keys,
            out_kernel_init=self.out_kernel_init, name="motion_attn")(h, motion, q_rope, k_rope)
        return x + out.astype(x.dtype)


class WanHead(nn.Module):
    """Output head (§4.7): (modulation + e) → shift, scale; Linear(LN(x)·(1 + scale) + shift).
    Uses e, the time_embedding output (no SiLU, no projection); LN eps 1e-6 without affine."""

    dim: int
    out_features: int
    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, e):
        modulation = self.param("modulation", partitioned(nn.initializers.normal(self.dim ** -0.5),
                                                          (None, "embed")),
                                (2, self.dim), self.param_dtype)
        m = modulation.astype(jnp.float32)[None] + e.astype(jnp.float32)[:, None, :]
        shift, scale = m[:, 0, None, :], m[:, 1, None, :]
        h = (layer_norm_f32(x, self.epsilon) * (1 + scale) + shift).astype(self.dtype)
        return dense(self.out_features, "head", ("embed", None), dtype=self.dtype,
                     param_dtype=self.param_dtype, precision=self.precision)(h)
