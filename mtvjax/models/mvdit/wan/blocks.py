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
  added by `nn.scan(metadata_params=...)` in `scanned`;
* None    small input-feature axes (patch vector, sinusoid, CLIP width, text width, head output)
  that are never worth sharding.

Attention kernels mirror the released projections (Linear with bias, stored torch-style [out, in]);
the converter reshapes `[n·d, D]` to `[D, n, d]`, channel = head·d + i (17B §2.3 "Merge the heads").
Norms compute in float32 and cast back, as the released WanLayerNorm / WanRMSNorm do (§4 dtypes).

The transformer block `WanBlock` (§4.6) and `WanBlockGroup` ([motion block, plain blocks], the
plain ones scanned) take a `BlockContext` of per-forward inputs; `scanned` / `block_class` wrap
them in `nn.scan` / `nn.remat` (layout: `mtvjax.models.mvdit.wan.model`); `WanImageEmbedding` is
the CLIP-image MLPProj.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtvjax.models.layers.activations import gelu_tanh
from mtvjax.models.layers.attention import AttentionKernel, dot_product_attention
from mtvjax.models.layers.dtypes import remat_policy
from mtvjax.models.layers.norms import LayerNorm, RMSNorm, layer_norm_f32
from mtvjax.models.layers.rope import INTERLEAVED, RopeTable, apply_rope
from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit.blocks import shard_video
from mtvjax.models.mvdit.wan.config import WanDiTConfig

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
    implementation: str | AttentionKernel | None = None
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

    def _sdpa(self, q, k, v, context_parallel: str):
        """`context_parallel`: "self" or "cross" (x is the video, `context_attention`)."""
        return dot_product_attention(q, k, v, implementation=self.implementation,
                                     context_parallel=context_parallel)


class WanSelfAttention(_WanAttentionBase):
    """Self-attention (§4 step 6.1): full-width RMSNorm on q and k, vision RoPE on q and k."""

    @nn.compact
    def __call__(self, x, rope: RopeTable):
        q = self._norm("norm_q")(self._proj("q")(x))
        k = self._norm("norm_k")(self._proj("k")(x))
        v = self._proj("v")(x)
        q, k = apply_rope(q, rope, INTERLEAVED), apply_rope(k, rope, INTERLEAVED)
        return self._out(x.shape[-1])(self._sdpa(q, k, v, "self"))


class WanI2VCrossAttention(_WanAttentionBase):
    """Text + CLIP-image cross-attention (§4 step 6.2): one q (RMSNorm), two separate softmax
    attentions (text k/v with norm_k; image k_img/v_img with norm_k_img), per-head outputs summed,
    then o once. No RoPE, no mask (padded text rows are attended, as released)."""

    @nn.compact
    def __call__(self, x, text, image):
        q = self._norm("norm_q")(self._proj("q")(x))
        k = self._norm("norm_k")(self._proj("k")(text))
        v = self._proj("v")(text)
        out = self._sdpa(q, k, v, "cross")
        if image is not None:
            k_img = self._norm("norm_k_img")(self._proj("k_img")(image))
            v_img = self._proj("v_img")(image)
            out = out + self._sdpa(q, k_img, v_img, "cross")
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
                         bias_init=self.out_bias_init)(self._sdpa(q, k, v, "cross"))


class WanMotionBranch(nn.Module):
    """`norm4` (affine LN) + `motion_attn`, as the motion block holds them; used standalone to
    initialise fresh motion modules (base-model conversion) with the block's parameter names."""

    num_heads: int
    head_dim: int
    epsilon: float = 1e-6
    heads_major_keys: bool = True
    implementation: str | AttentionKernel | None = None
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


class BlockContext(NamedTuple):
    """Per-forward inputs shared by all blocks (broadcast through the scans)."""

    e0: jax.Array                 # [B, 6, D] float32
    text: jax.Array               # [B, text_len, D]
    image: jax.Array | None       # [B, 257, D]
    motion: jax.Array | None      # [B, M, D] padded motion tokens, or None (skip motion attn)
    vision_rope: RopeTable        # [S, d/2]
    motion_rope: RopeTable | None  # [M, d/2] or [B, M, d/2] keys; None: not rotated
    motion_q_rope: RopeTable | None = None  # [S, d/2] motion-attention queries; None: unrotated
    isa: ISA.ISAInputs | None = None  # points / camera / mask of the ISA conditioning


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


class WanBlock(nn.Module):
    """One WanAttentionBlock (§4.6). `__call__(x, ctx) -> (x, None)` so it scans directly."""

    config: WanDiTConfig
    motion: bool = False
    grid: tuple | None = None          # (F, h, w) token grid, for ISA

    @nn.compact
    def __call__(self, x, ctx: BlockContext):
        cfg = self.config
        point_tokens = None
        if isinstance(x, tuple):           # ISA: the carry holds the point tokens
            x, point_tokens = x
        x = shard_video(x)
        dtype, pdt, f32 = cfg.compute_dtype, cfg.params_dtype, jnp.float32
        width = x.shape[-1]
        attn_kw = dict(num_heads=cfg.num_heads, head_dim=cfg.head_dim, epsilon=cfg.eps,
                       implementation=cfg.attention_kernel, dtype=dtype, param_dtype=pdt,
                       precision=cfg.precision)
        modulation = self.param("modulation", partitioned(nn.initializers.normal(width ** -0.5),
                                                          (None, "embed")), (6, width), pdt)
        m = modulation.astype(f32)[None] + ctx.e0.astype(f32)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            m[:, j, None, :] for j in range(6))

        # 1. self-attention, modulated, gated
        h = (layer_norm_f32(x, cfg.eps) * (1 + scale_sa) + shift_sa).astype(dtype)
        y = WanSelfAttention(**attn_kw, name="self_attn")(h, ctx.vision_rope)
        x = (x.astype(f32) + y.astype(f32) * gate_sa).astype(dtype)

        # 2. text + image cross-attention (affine norm3, no gate)
        h = LayerNorm(cfg.eps, logical_axes=("embed",), param_dtype=pdt, name="norm3")(x)
        x = x + WanI2VCrossAttention(**attn_kw, name="cross_attn")(h, ctx.text,
                                                                   ctx.image).astype(dtype)

        # 3. motion attention (affine norm4, no gate, no modulation; §2.3)
        if self.motion and ctx.motion is not None:
            h = LayerNorm(cfg.eps, logical_axes=("embed",), param_dtype=pdt, name="norm4")(x)
            y = WanMotionAttention(**attn_kw, heads_major_keys=cfg.heads_major_motion_keys,
                                   name="motion_attn")(h, ctx.motion, ctx.motion_q_rope,
                                                       ctx.motion_rope)
            x = x + y.astype(dtype)
        elif self.motion and ctx.isa is not None:    # 3'. ISA in the motion slot
            x, point_tokens = ISA.apply_isa(cfg.isa, width, cfg.num_heads, x, self.grid, ctx.isa,
                                            point_tokens,
                                            attention_implementation=cfg.attention_kernel,
                                            dtype=dtype, param_dtype=pdt, precision=cfg.precision)
            x = x.astype(dtype)

        # 4. FFN, modulated, gated
        h = (layer_norm_f32(x, cfg.eps) * (1 + scale_ff) + shift_ff).astype(dtype)
        dkw = dict(dtype=dtype, param_dtype=pdt, precision=cfg.precision)
        h = dense(cfg.ffn_dim, "ffn_0", ("embed", "mlp"), **dkw)(h)
        h = dense(width, "ffn_2", ("mlp", "embed"), **dkw)(gelu_tanh(h))
        x = shard_video((x.astype(f32) + h.astype(f32) * gate_ff).astype(dtype))
        return (x if point_tokens is None else (x, point_tokens)), None


def block_class(config: WanDiTConfig):
    use, policy = remat_policy(config.remat)
    if not use:
        return WanBlock
    return nn.remat(WanBlock, policy=policy, prevent_cse=False)


def scanned(cls, length: int, axis_name: str, unroll: int = 1):
    return nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=nn.broadcast, length=length, unroll=min(unroll, length),
                   metadata_params={nn.PARTITION_NAME: axis_name})


class WanBlockGroup(nn.Module):
    """[motion block, `num_plain` plain blocks]; the plain blocks are scanned (`sublayers`)."""

    config: WanDiTConfig
    num_plain: int
    grid: tuple | None = None

    @nn.compact
    def __call__(self, x, ctx: BlockContext):
        block = block_class(self.config)
        x, _ = block(self.config, motion=True, grid=self.grid, name="motion_block")(x, ctx)
        if self.num_plain:
            x, _ = scanned(block, self.num_plain, "sublayers", self.config.scan_unroll)(
                self.config, motion=False, grid=self.grid, name="plain")(x, ctx)
        return x, None


class WanImageEmbedding(nn.Module):
    """img_emb (MLPProj): LN(1280) → Linear → GELU (exact) → Linear(→D) → LN(D), eps 1e-5."""

    config: WanDiTConfig

    @nn.compact
    def __call__(self, image):
        cfg = self.config
        pdt, dtype = cfg.params_dtype, cfg.compute_dtype
        dkw = dict(dtype=dtype, param_dtype=pdt, precision=cfg.precision)
        h = LayerNorm(cfg.image_eps, logical_axes=(None,), param_dtype=pdt,
                      name="proj_0")(image.astype(jnp.float32))
        h = dense(image.shape[-1], "proj_1", (None, None), **dkw)(h.astype(dtype))
        h = dense(cfg.dim, "proj_3", (None, "embed"), **dkw)(nn.gelu(h, approximate=False))
        return LayerNorm(cfg.image_eps, logical_axes=("embed",), param_dtype=pdt,
                         name="proj_4")(h.astype(jnp.float32)).astype(dtype)
