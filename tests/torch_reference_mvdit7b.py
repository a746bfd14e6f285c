"""Independent PyTorch model of the released MV-DiT-7B transformer, written from
docs/reference/mvdit7b.md (no diffusers, no mtvjax code).

Test helper, not a test. `state_dict()` keys are exactly the released names (§2), in torch's
order. Inputs follow the released forward: hidden_states `[B, F, C_in, H, W]`, timestep `[B]`,
motion_emb `[B, M, D]`, and full-width `(cos, sin)` RoPE tables `[S, head_dim]` / `[M, head_dim]`
built by `vision_rope` / `motion_rope` below (repeat-interleaved, float32, §4).

Options beyond the release (for the paper variants of the JAX model; defaults = released):
`uncond_shape` (released: fixed (312, 3072)), `motion_every` (attn0 only in blocks 0, k, 2k...),
`v_norm` (attn0.norm_v on the values).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# RoPE tables (§4): interleaved pairs, each band its own d, theta 10000, float32
# ----------------------------------------------------------------------------------------------


def _band(pos: torch.Tensor, d: int, theta: float = 10000.0):
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.outer(pos.to(torch.float32), inv)
    return ang.cos().repeat_interleave(2, dim=1), ang.sin().repeat_interleave(2, dim=1)


def _concat(bands):
    return torch.cat([c for c, _ in bands], 1), torch.cat([s for _, s in bands], 1)


def vision_rope(frames: int, gh: int, gw: int, head_dim: int = 64):
    """[S, head_dim] cos/sin; bands t | h | w = d/4 | 3d/8 | 3d/8; rows t, h, w (w fastest)."""
    t = torch.arange(frames).repeat_interleave(gh * gw)
    h = torch.arange(gh).repeat_interleave(gw).repeat(frames)
    w = torch.arange(gw).repeat(frames * gh)
    dt, dh = head_dim // 4, head_dim // 8 * 3
    return _concat([_band(t, dt), _band(h, dh), _band(w, dh)])


def motion_rope(frames: int, mean_joints, head_dim: int = 64):
    """[F·24, head_dim] cos/sin; bands t | x | y | z = d/4 each; row f·24 + j; x/y/z = mean joint
    position minus the mean over the joints on that axis (mm, float32)."""
    mean = torch.as_tensor(np.asarray(mean_joints, np.float32))
    centred = torch.stack([mean[:, a] - mean[:, a].mean() for a in range(3)], 1)
    j = centred.shape[0]
    t = torch.arange(frames, dtype=torch.float32).repeat_interleave(j)
    xyz = centred.repeat(frames, 1)
    d = head_dim // 4
    return _concat([_band(t, d)] + [_band(xyz[:, a], d) for a in range(3)])


def rope_4d_query(frames: int, gh: int, gw: int, head_dim: int = 64):
    """Paper variant: vision tokens at (t, h, w, z=0) in the motion bands."""
    t = torch.arange(frames).repeat_interleave(gh * gw)
    h = torch.arange(gh).repeat_interleave(gw).repeat(frames)
    w = torch.arange(gw).repeat(frames * gh)
    d = head_dim // 4
    return _concat([_band(t, d), _band(h, d), _band(w, d), _band(torch.zeros_like(t), d)])


def rotate(x, table):
    """x [B, heads, S, d], interleaved pairs: x·cos + r·sin with r_2i = −x_2i+1, r_2i+1 = x_2i;
    computed in float32."""
    cos, sin = table
    xf = x.float()
    r = torch.stack([-xf[..., 1::2], xf[..., 0::2]], dim=-1).flatten(-2)
    return (xf * cos + r * sin).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


USE_SDPA = False   # True: attention by torch's scaled_dot_product_attention (same maths)


class Attn(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int = 64, v_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(head_dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(head_dim, eps=1e-6)
        if v_norm:
            self.norm_v = nn.LayerNorm(head_dim, eps=1e-6)
        self.to_q = nn.Linear(dim, heads * head_dim)
        self.to_k = nn.Linear(dim, heads * head_dim)
        self.to_v = nn.Linear(dim, heads * head_dim)
        self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim), nn.Dropout(0.0)])

    def forward(self, x, ctx, q_rope, k_rope):
        b = x.shape[0]

        def split(a):
            return a.view(b, a.shape[1], self.heads, -1).transpose(1, 2)
        q, k, v = split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx))
        q, k = self.norm_q(q), self.norm_k(k)
        if hasattr(self, "norm_v"):
            v = self.norm_v(v)
        q, k = rotate(q, q_rope), rotate(k, k_rope)
        if USE_SDPA:    # the fused kernel (flash / memory-efficient on CUDA): speed checks
            out = F.scaled_dot_product_attention(q, k, v.to(q.dtype))
        else:
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            out = att @ v
        out = out.transpose(1, 2).reshape(b, x.shape[1], -1)
        return self.to_out[1](self.to_out[0](out))


class LayerNormZero(nn.Module):
    def __init__(self, emb: int, dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(emb, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x, emb):
        shift, scale, gate, _, _, _ = self.linear(self.silu(emb)).chunk(6, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None], gate[:, None]


class GeluProj(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class Block(nn.Module):
    def __init__(self, dim, heads, emb, motion=True, v_norm=False):
        super().__init__()
        if motion:
            self.attn0 = Attn(dim, heads, v_norm=v_norm)
        self.norm1 = LayerNormZero(emb, dim)
        self.attn1 = Attn(dim, heads)
        self.norm2 = LayerNormZero(emb, dim)
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([GeluProj(dim, 4 * dim), nn.Dropout(0.0),
                                     nn.Linear(4 * dim, dim), nn.Dropout(0.0)])

    def forward(self, x, emb, motion, vrope, mq_rope, mk_rope):
        h, gate = self.norm1(x, emb)
        x = x + gate * self.attn1(h, h, vrope, vrope)
        if hasattr(self, "attn0"):
            x = x + self.attn0(x, motion, mq_rope, mk_rope)      # raw stream, no gate
        h, gate = self.norm2(x, emb)
        for layer in self.ff.net:
            h = layer(h)
        return x + gate * h


class PatchEmbed(nn.Module):
    def __init__(self, cin, dim, text_dim, p):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, p, stride=p)
        self.text_proj = nn.Linear(text_dim, dim)     # never used

    def forward(self, x):  # [B, F, C, H, W]
        b, f = x.shape[:2]
        y = self.proj(x.flatten(0, 1))                # [B·F, D, h, w]
        y = y.flatten(2).transpose(1, 2)               # [B·F, h·w, D], w fastest
        return y.reshape(b, -1, y.shape[-1])


class TimeEmbedding(nn.Module):
    def __init__(self, dim, emb):
        super().__init__()
        self.linear_1 = nn.Linear(dim, emb)
        self.linear_2 = nn.Linear(emb, emb)

    def forward(self, t_emb):
        return self.linear_2(F.silu(self.linear_1(t_emb)))


class AdaLayerNorm(nn.Module):
    def __init__(self, emb, dim):
        super().__init__()
        self.linear = nn.Linear(emb, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x, emb):
        shift, scale = self.linear(F.silu(emb)).chunk(2, dim=1)   # shift first
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


def timestep_sinusoid(t, dim):
    """cos first (flip_sin_to_cos), freq_shift 0, float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = t[:, None].float() * freqs[None]
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


class ReferenceMVDiT7B(nn.Module):
    def __init__(self, num_layers=2, heads=2, head_dim=64, in_channels=32, out_channels=16,
                 time_embed_dim=64, text_embed_dim=32, patch=2, uncond_shape=(312, 3072),
                 motion_every=1, v_norm=False):
        super().__init__()
        dim = heads * head_dim
        self.dim, self.patch, self.out_channels = dim, patch, out_channels
        self.unconditional_motion_token = nn.Parameter(torch.randn(*uncond_shape))
        self.patch_embed = PatchEmbed(in_channels, dim, text_embed_dim, patch)
        self.time_embedding = TimeEmbedding(dim, time_embed_dim)
        self.transformer_blocks = nn.ModuleList([
            Block(dim, heads, time_embed_dim, motion=motion_every > 0 and i % motion_every == 0,
                  v_norm=v_norm)
            for i in range(num_layers)])
        self.norm_final = nn.LayerNorm(dim, eps=1e-5)
        self.norm_out = AdaLayerNorm(time_embed_dim, dim)
        self.proj_out = nn.Linear(dim, patch * patch * out_channels)

    def forward(self, hidden_states, timestep, motion_emb, image_rotary_emb, motion_rotary_emb,
                motion_query_rotary_emb=None):
        b, f, _, hh, ww = hidden_states.shape
        p = self.patch
        emb = self.time_embedding(timestep_sinusoid(timestep, self.dim))
        x = self.patch_embed(hidden_states)
        mq = image_rotary_emb if motion_query_rotary_emb is None else motion_query_rotary_emb
        for block in self.transformer_blocks:
            x = block(x, emb, motion_emb, image_rotary_emb, mq, motion_rotary_emb)
        x = self.norm_out(self.norm_final(x), emb)
        x = self.proj_out(x)
        x = x.reshape(b, f, hh // p, ww // p, self.out_channels, p, p)
        x = x.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, f, self.out_channels, hh, ww)
        return x


def released_keys(num_layers: int) -> list[str]:
    """The released state-dict names in torch's order (docs/reference/mvdit7b.md §2)."""
    def attn(prefix):
        return ([f"{prefix}.{n}.{w}" for n in ("norm_q", "norm_k") for w in ("weight", "bias")]
                + [f"{prefix}.{n}.{w}" for n in ("to_q", "to_k", "to_v", "to_out.0")
                   for w in ("weight", "bias")])

    def wb(name):
        return [f"{name}.weight", f"{name}.bias"]
    keys = ["unconditional_motion_token", *wb("patch_embed.proj"), *wb("patch_embed.text_proj"),
            *wb("time_embedding.linear_1"), *wb("time_embedding.linear_2")]
    for n in range(num_layers):
        b = f"transformer_blocks.{n}"
        keys += (attn(f"{b}.attn0") + wb(f"{b}.norm1.linear") + wb(f"{b}.norm1.norm")
                 + attn(f"{b}.attn1") + wb(f"{b}.norm2.linear") + wb(f"{b}.norm2.norm")
                 + wb(f"{b}.ff.net.0.proj") + wb(f"{b}.ff.net.2"))
    return keys + [*wb("norm_final"), *wb("norm_out.linear"), *wb("norm_out.norm"),
                   *wb("proj_out")]
