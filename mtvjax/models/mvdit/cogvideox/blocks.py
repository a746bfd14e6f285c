"""The MV-DiT-7B's transformer block, its scanned group and the patch embedding (§3.2, §3.3).

`CogVideoXMVBlock`: norm1 (AdaLN-zero) → gated self-attention with the vision RoPE → **attn0**,
the ungated motion cross-attention on the raw residual stream (or, with ISA conditioning, the
interspatial attention in the group's first block) → norm2 → gated tanh-GELU FFN.
`CogVideoXMVBlockGroup` is one scanned step: `motion_every` (ISA: `isa.every`) blocks, motion
in the first. `PatchEmbed` cuts p×p patches per frame and holds the released, never-used
`text_proj` (`UnusedLinear`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mtvjax.models.layers.attention import AttentionKernel
from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit.blocks import (AdaLNModulation, ComputeModule, FeedForward, Linear,
                                        MVAttention, logical, shard_video, torch_linear_init)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Hashable settings shared by all blocks."""

    num_heads: int
    head_dim: int
    mlp_ratio: int = 4
    norm_eps: float = 1e-5
    qk_norm_eps: float = 1e-6
    modulation_chunks: int = 6
    motion_v_norm: bool = False
    motion_out_zero_init: bool = True
    attention_implementation: str | AttentionKernel | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim


class CogVideoXMVBlock(nn.Module):
    """One MV-DiT-7B block (7B §3.3); `has_motion` adds the motion cross-attention `attn0`."""

    spec: BlockSpec
    has_motion: bool = True
    isa: ISA.ISASettings | None = None     # an ISA block at attn0's place (conditioning "isa")
    grid: tuple | None = None              # (F, h, w) token grid, for ISA

    @nn.compact
    def __call__(self, x, emb_act, motion, vision_rope, motion_q_rope, motion_k_rope,
                 isa_inputs=None, point_tokens=None):
        s = self.spec
        kw = dict(dtype=s.dtype, param_dtype=s.param_dtype, precision=s.precision)
        attn = dict(num_heads=s.num_heads, head_dim=s.head_dim, qk_norm=True,
                    norm_eps=s.qk_norm_eps, implementation=s.attention_implementation, **kw)
        x = shard_video(x)
        h, c = AdaLNModulation(s.modulation_chunks, ("shift", "scale", "gate"), s.norm_eps,
                               name="norm1", **kw)(x, emb_act)
        x = x + c["gate"] * MVAttention(name="attn1", context_parallel="self", **attn)(
            h, q_rope=vision_rope, k_rope=vision_rope)
        if self.has_motion:
            # Query from the raw residual stream; no norm, no modulation, no gate (7B §3.3.3).
            x = x + MVAttention(v_norm=s.motion_v_norm, out_zero_init=s.motion_out_zero_init,
                                context_parallel="cross", name="attn0", **attn)(
                x, motion, q_rope=motion_q_rope, k_rope=motion_k_rope)
        if self.isa is not None:
            x, point_tokens = ISA.apply_isa(self.isa, s.width, s.num_heads, x, self.grid,
                                            isa_inputs, point_tokens,
                                            attention_implementation=s.attention_implementation,
                                            **kw)
        h, c = AdaLNModulation(s.modulation_chunks, ("shift", "scale", "gate"), s.norm_eps,
                               name="norm2", **kw)(x, emb_act)
        x = shard_video(x + c["gate"] * FeedForward(s.mlp_ratio * s.width, name="ff", **kw)(h))
        return x if self.isa is None else (x, point_tokens)


class CogVideoXMVBlockGroup(nn.Module):
    """`size` consecutive blocks, the first with motion attention (when `motion`) or an ISA block
    (when `isa`; the carry is then (x, point tokens)): the scan body."""

    spec: BlockSpec
    size: int = 1
    motion: bool = True
    isa: ISA.ISASettings | None = None
    grid: tuple | None = None

    @nn.compact
    def __call__(self, x, emb_act, motion, vision_rope, motion_q_rope, motion_k_rope,
                 isa_inputs=None):
        point_tokens = None
        if self.isa is not None:
            x, point_tokens = x
        for r in range(self.size):
            isa = self.isa if r == 0 else None
            x = CogVideoXMVBlock(self.spec, has_motion=self.motion and r == 0, isa=isa,
                                 grid=self.grid, name=f"block_{r}")(
                x, emb_act, motion, vision_rope, motion_q_rope, motion_k_rope, isa_inputs,
                point_tokens)
            if isa is not None:
                x, point_tokens = x
        return (x if self.isa is None else (x, point_tokens)), None


class PatchEmbed(ComputeModule):
    """p×p patches of every frame → D (`proj`, kernel `[C·p·p, D]`, rows in (c, dy, dx) order,
    = torch's Conv2d weight `[D, C, p, p]` reshaped to `[D, C·p·p]` and transposed). `text_proj`
    is created for checkpoint compatibility only and never applied (7B §2, §3.2)."""

    features: int
    patch_size: int
    text_embed_dim: int = 0

    @nn.compact
    def __call__(self, x):
        b, f, hh, ww, c = x.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"latent size {hh}×{ww} is not a multiple of the patch size {p}")
        h, w = hh // p, ww // p
        patches = x.reshape(b, f, h, p, w, p, c).transpose(0, 1, 2, 4, 6, 3, 5)
        patches = patches.reshape(b, f * h * w, c * p * p)
        if self.text_embed_dim:
            UnusedLinear(self.text_embed_dim, self.features, ("text_embed", "embed"),
                         self.param_dtype, name="text_proj")()
        return Linear(self.features, ("patch", "embed"), name="proj", **self.kw)(patches)


class UnusedLinear(nn.Module):
    """Parameters `kernel [in, out]` / `bias [out]` of a Linear that the forward pass never
    applies (CogVideoX's `text_proj`): kept so checkpoints round-trip and counts match."""

    in_features: int
    features: int
    kernel_axes: tuple = ("text_embed", "embed")
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self):
        self.param("kernel", logical(torch_linear_init(0), self.kernel_axes),
                   (self.in_features, self.features), self.param_dtype)
        self.param("bias", logical(nn.initializers.zeros, self.kernel_axes[-1:]),
                   (self.features,), self.param_dtype)
