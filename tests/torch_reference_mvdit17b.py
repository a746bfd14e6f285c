"""Independent PyTorch reference of the released MV-DiT-17B transformer (docs/reference/mvdit17b.md).

Written from the document alone, in float32 (float64 where the released model uses it: the time
sinusoid and the complex vision RoPE). Module and parameter names reproduce the released state
dict exactly (§3.1), including the motion attention's key layout (§2.3). Used by
tests/test_mvdit17b.py only.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

TINY = dict(dim=256, num_heads=2, num_layers=5, ffn_dim=512, text_dim=64, in_dim=36, out_dim=16,
            freq_dim=256, text_len=512, motion_dim=64, eps=1e-6)


class WanRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    def __init__(self, dim, eps=1e-6, elementwise_affine=False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x):
        return super().forward(x.float()).type_as(x)


def sinusoid_f64(dim, t):
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                      -torch.arange(half, dtype=torch.float64) / half)
    angles = torch.outer(t, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def wan_vision_freqs(head_dim, max_len=1024, theta=10000.0):
    """[1024, head_dim/2] complex128: t | h | w bands of 44/42/42 real dims at 128."""
    def band(r):
        inv = 1.0 / torch.pow(torch.tensor(theta, dtype=torch.float64),
                              torch.arange(0, r, 2, dtype=torch.float64) / r)
        ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv)
        return torch.polar(torch.ones_like(ang), ang)
    hw = 2 * (head_dim // 6)
    return torch.cat([band(head_dim - 2 * hw), band(hw), band(hw)], dim=1)


def vision_rope_apply(x, grid, freqs):
    """x [B, S, n, d]; grid (f, h, w); interleaved complex pairs; float64 multiply."""
    b, s, n, d = x.shape
    c = d // 2
    f, h, w = grid
    ct = c - 2 * (c // 3)
    ch = c // 3
    ft, fh, fw = freqs.split([ct, ch, ch], dim=1)
    table = torch.cat([ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                       fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(s, 1, c)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, s, n, c, 2))
    return torch.view_as_real(xc * table).flatten(3).to(x.dtype)


def motion_rope_tables(latent_frames, joints, head_dim=128):
    """Full-width repeat-interleaved float32 (cos, sin) [M, head_dim]; bands 44/28/28/28."""
    t_dim = head_dim - 4 * (head_dim // 6)
    s_dim = (head_dim - t_dim) // 3
    joints = np.asarray(joints, np.float32)
    nj = joints.shape[0]
    pos_t = np.repeat(np.arange(latent_frames, dtype=np.float32), nj)
    pos_xyz = np.tile(joints, (latent_frames, 1))

    def band(pos, r):
        inv = (np.float32(1.0) / (np.float32(10000.0) ** (np.arange(0, r, 2, dtype=np.float32)
                                                        / np.float32(r)))).astype(np.float32)
        return np.outer(pos.astype(np.float32), inv).astype(np.float32)

    ang = np.concatenate([band(pos_t, t_dim)] + [band(pos_xyz[:, a], s_dim) for a in range(3)],
                         axis=1)
    cos = np.repeat(np.cos(ang).astype(np.float32), 2, axis=1)
    sin = np.repeat(np.sin(ang).astype(np.float32), 2, axis=1)
    return torch.from_numpy(cos), torch.from_numpy(sin)


def sdpa(q, k, v):
    """q [B, T, n, d], k/v [B, S, n, d] → [B, T, n, d]; softmax(qkᵀ/√d)v in float32."""
    q, k, v = (a.transpose(1, 2) for a in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return (logits.softmax(-1) @ v).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads, eps):
        super().__init__()
        self.n, self.d = num_heads, dim // num_heads
        self.q, self.k = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v, self.o = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_q, self.norm_k = WanRMSNorm(dim, eps), WanRMSNorm(dim, eps)

    def forward(self, x, grid, freqs):
        b, s, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, s, self.n, self.d)
        k = self.norm_k(self.k(x)).view(b, s, self.n, self.d)
        v = self.v(x).view(b, s, self.n, self.d)
        out = sdpa(vision_rope_apply(q, grid, freqs), vision_rope_apply(k, grid, freqs), v)
        return self.o(out.flatten(2))


class I2VCrossAttention(SelfAttention):
    def __init__(self, dim, num_heads, eps):
        super().__init__(dim, num_heads, eps)
        self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_k_img = WanRMSNorm(dim, eps)

    def forward(self, x, context):
        img, text = context[:, :257], context[:, 257:]
        b, s, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, s, self.n, self.d)
        k = self.norm_k(self.k(text)).view(b, -1, self.n, self.d)
        v = self.v(text).view(b, -1, self.n, self.d)
        k_img = self.norm_k_img(self.k_img(img)).view(b, -1, self.n, self.d)
        v_img = self.v_img(img).view(b, -1, self.n, self.d)
        out = sdpa(q, k, v).flatten(2) + sdpa(q, k_img, v_img).flatten(2)
        return self.o(out)


class MotionAttention(SelfAttention):
    def forward(self, x, motion, grid, freqs, motion_cos, motion_sin):
        b, s, _ = x.shape
        m = motion.shape[1]
        q = vision_rope_apply(self.norm_q(self.q(x)).view(b, s, self.n, self.d), grid, freqs)
        k = self.norm_k(self.k(motion))                 # [B, M, D], contiguous
        k = k.view(b, self.n, m, self.d)                # released: heads slowest (the defect)
        kf = k.float()
        rot = torch.stack([-kf[..., 1::2], kf[..., 0::2]], dim=-1).flatten(-2)
        k = (kf * motion_cos + rot * motion_sin).type_as(k)   # table row j = key slot j
        k = k.transpose(1, 2)                           # [B, M (slot), n, d]
        v = self.v(motion).view(b, m, self.n, self.d)
        return self.o(sdpa(q, k, v).flatten(2))


class Block(nn.Module):
    def __init__(self, index, dim, ffn_dim, num_heads, eps, motion_every=4):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = I2VCrossAttention(dim, num_heads, eps)
        self.has_motion = motion_every > 0 and index % motion_every == 0
        if self.has_motion:
            self.norm4 = WanLayerNorm(dim, eps, elementwise_affine=True)
            self.motion_attn = MotionAttention(dim, num_heads, eps)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(ffn_dim, dim))

    def forward(self, x, e0, context, grid, freqs, motion, motion_cos, motion_sin):
        m = (self.modulation + e0).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x) * (1 + m[1]) + m[0], grid, freqs)
        x = x + y * m[2]
        x = x + self.cross_attn(self.norm3(x), context)
        if self.has_motion and motion is not None:
            x = x + self.motion_attn(self.norm4(x), motion, grid, freqs, motion_cos, motion_sin)
        y = self.ffn(self.norm2(x) * (1 + m[4]) + m[3])
        return x + y * m[5]


class Head(nn.Module):
    def __init__(self, dim, out_dim, patch, eps):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.norm = WanLayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch) * out_dim)

    def forward(self, x, e):
        shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


class MLPProj(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x):
        return self.proj(x)


class Transformer17B(nn.Module):
    """Released layout: patch_embedding, text_embedding, time_embedding, time_projection,
    blocks, head, img_emb (§3.1 "Order")."""

    def __init__(self, dim=5120, num_heads=40, num_layers=40, ffn_dim=13824, text_dim=4096,
                 in_dim=36, out_dim=16, freq_dim=256, text_len=512, motion_dim=3072, eps=1e-6,
                 motion_every=4, patch=(1, 2, 2)):
        super().__init__()
        self.dim, self.num_heads, self.freq_dim, self.text_len = dim, num_heads, freq_dim, text_len
        self.out_dim, self.patch = out_dim, patch
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch, stride=patch)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(),
                                            nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList([Block(i, dim, ffn_dim, num_heads, eps, motion_every)
                                     for i in range(num_layers)])
        self.head = Head(dim, out_dim, patch, eps)
        self.img_emb = MLPProj(1280, dim)
        self.freqs = wan_vision_freqs(dim // num_heads)          # plain attribute, not a buffer
        self.pad_motion_tokens = torch.zeros(1, 1, dim - motion_dim)   # plain attribute

    def forward(self, x, t, context, seq_len, clip_fea, y, motion_tokens, motion_rotary_emb):
        """x [B, 16, F, H, W], y [B, 20, F, H, W], t [B], context: list of [L_b, text_dim],
        clip_fea [B, 257, 1280], motion_tokens [B, M, motion_dim] or None,
        motion_rotary_emb (cos, sin) [M, head_dim]. Returns [B, out, F, H, W]."""
        x = torch.cat([x, y.to(x.dtype)], dim=1)
        x = self.patch_embedding(x)
        b, _, f, h, w = x.shape
        grid = (f, h, w)
        x = x.flatten(2).transpose(1, 2)
        assert seq_len == x.shape[1]
        e = self.time_embedding(sinusoid_f64(self.freq_dim, t).float())
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        text = torch.stack([torch.cat([c, c.new_zeros(self.text_len - c.shape[0], c.shape[1])])
                            for c in context])
        context = torch.cat([self.img_emb(clip_fea), self.text_embedding(text)], dim=1)
        motion = None
        cos = sin = None
        if motion_tokens is not None:
            pad = self.pad_motion_tokens.to(motion_tokens.dtype).expand(
                b, motion_tokens.shape[1], -1)
            motion = torch.cat([motion_tokens, pad], dim=-1)
            cos, sin = motion_rotary_emb
        for block in self.blocks:
            x = block(x, e0, context, grid, self.freqs, motion, cos, sin)
        x = self.head(x, e)
        c, (pt, ph, pw) = self.out_dim, self.patch
        x = x.view(b, f, h, w, pt, ph, pw, c)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(b, c, f * pt, h * ph, w * pw)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic random weights with non-trivial norms and biases: every tensor ~ N(0, s²)
    with s = 1/√fan_in for matrices, 0.3 for vectors (+1 for norm weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim >= 2 and not name.endswith("modulation"):
                x = x / math.sqrt(p[0].numel())
            elif name.endswith("modulation"):
                x = 0.3 * x
            elif "norm" in name and name.endswith("weight") or name.endswith(
                    ("proj.0.weight", "proj.4.weight")):
                x = 1.0 + 0.3 * x
            else:
                x = 0.3 * x
            p.copy_(x.to(p.dtype))
    return model
