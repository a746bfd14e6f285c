"""Independent PyTorch model of the released 4DMoT tokenizer, written from the reference notes.

Test helper, not a test: its `state_dict()` carries the released names (`encoder.*`,
`decoder.*`, `vq.codebook`), so `torch.save({'module': model.state_dict()}, path)` lays a file
out like `4DMoT/mp_rank_00_model_states.pt`. Works on `[batch, channels, frames, joints]`.
Widths are constructor arguments so tests can build a small instance.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """GroupNorm, SiLU, dilated 3x3 conv, GroupNorm, SiLU, 1x1 conv; plus a (projected) residual."""

    def __init__(self, cin: int, cout: int, groups: int, dilation_reference: int):
        super().__init__()
        d = max(1, dilation_reference // cout - 1)
        self.block = nn.Sequential(
            nn.GroupNorm(groups, cin, eps=1e-6, affine=True), nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=d, dilation=d),
            nn.GroupNorm(groups, cout, eps=1e-6, affine=True), nn.SiLU(),
            nn.Conv2d(cout, cout, 1))
        self.conv_short = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.block(x)
        return (x if self.conv_short is None else self.conv_short(x)) + h


def joint_conv(conv: nn.Conv1d, x):
    """1-D conv over joints, every frame on its own: [B, C, T, J] -> [B, C', T, J]."""
    b, c, t, j = x.shape
    y = conv(x.permute(0, 2, 1, 3).reshape(b * t, c, j))
    return y.reshape(b, t, y.shape[1], j).permute(0, 2, 1, 3)


def pool_frames(x):
    """Average pairs of frames; an odd count keeps frame 0 unpooled."""
    if x.shape[2] % 2:
        return torch.cat([x[:, :, :1], F.avg_pool2d(x[:, :, 1:], (2, 1))], dim=2)
    return F.avg_pool2d(x, (2, 1))


def upsample_frames(x):
    """Bilinear x2 along frames (align_corners=True); an odd count > 1 keeps frame 0 apart."""
    def up(y):
        return F.interpolate(y, scale_factor=(2.0, 1.0), mode="bilinear", align_corners=True)
    if x.shape[2] > 1 and x.shape[2] % 2:
        return torch.cat([x[:, :, :1], up(x[:, :, 1:])], dim=2)
    return up(x)


class Resample(nn.Module):
    """Frames pooled ("downsample") or upsampled ("upsample") ×2, then a joint conv.

    The conv has the released name: `joint_downsample` or `upsampler`.
    """

    def __init__(self, width: int, kernel: int, resample: str):
        super().__init__()
        self.frames = pool_frames if resample == "downsample" else upsample_frames
        self.conv_name = "joint_downsample" if resample == "downsample" else "upsampler"
        self.add_module(self.conv_name, nn.Conv1d(width, width, kernel, padding=kernel // 2))

    def forward(self, x):
        return joint_conv(getattr(self, self.conv_name), self.frames(x))


class Half(nn.Module):
    """conv_in, resnet1.*, {down|up}sample1, resnet2, resnet3.*, {down|up}sample2, conv_out."""

    def __init__(self, cin, widths, cout, blocks, groups, dilation_reference, kernel, resample):
        super().__init__()
        w0, w1 = widths
        res = functools.partial(ResBlock, groups=groups, dilation_reference=dilation_reference)
        self.conv_in = nn.Conv2d(cin, w0, 3, padding=1)
        self.resnet1 = nn.ModuleList(res(w0, w0) for _ in range(blocks))
        self.resnet2 = res(w0, w1)
        self.resnet3 = nn.ModuleList(res(w1, w1) for _ in range(blocks))
        self.conv_out = nn.Conv2d(w1, cout, 3, padding=1)
        self.resample = resample
        setattr(self, f"{resample}1", Resample(w0, kernel, resample))
        setattr(self, f"{resample}2", Resample(w1, kernel, resample))

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.resnet1:
            x = block(x)
        x = getattr(self, f"{self.resample}1")(x)
        x = self.resnet2(x)
        for block in self.resnet3:
            x = block(x)
        return self.conv_out(getattr(self, f"{self.resample}2")(x))


class Quantizer(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("codebook", torch.zeros(size, dim))

    def forward(self, z):
        """[N, D] -> nearest-code indices [N] (squared Euclidean distance)."""
        c = self.codebook
        d = (z ** 2).sum(1, keepdim=True) - 2 * z @ c.T + (c ** 2).sum(1)[None]
        return d.argmin(1)


def windows(frames: int, size: int):
    """(start, stop) of windows of `size` frames, the first also taking the remainder."""
    n, r = divmod(frames, size)
    return [(0, size + r)] + [(size * i + r, size * (i + 1) + r) for i in range(1, n)]


class Reference4DMoT(nn.Module):
    def __init__(self, channels=(128, 512), code_dim=3072, codebook_size=8192, num_res_blocks=3,
                 num_groups=32, dilation_reference=512, joint_kernel=3, window_frames=8):
        super().__init__()
        common = dict(blocks=num_res_blocks, groups=num_groups,
                      dilation_reference=dilation_reference, kernel=joint_kernel)
        self.encoder = Half(3, tuple(channels), code_dim, resample="downsample", **common)
        self.decoder = Half(code_dim, tuple(channels)[::-1], 3, resample="upsample", **common)
        self.vq = Quantizer(codebook_size, code_dim)
        self.window = window_frames
        self.latent_window = window_frames // 4

    @staticmethod
    def _windowed(fn, x, size):
        return torch.cat([fn(x[:, :, a:b]) for a, b in windows(x.shape[2], size)], dim=2)

    def encode(self, motion):
        """Normalised motion [B, T, J, 3] -> continuous tokens [B, D, L, J]."""
        return self._windowed(self.encoder, motion.permute(0, 3, 1, 2), self.window)

    def quantize(self, z):
        """[B, D, L, J] -> (codes [B, D, L, J], indices [B, L, J])."""
        b, d, l, j = z.shape
        idx = self.vq(z.permute(0, 2, 3, 1).reshape(-1, d))
        q = self.vq.codebook[idx].reshape(b, l, j, d).permute(0, 3, 1, 2)
        return q, idx.reshape(b, l, j)

    def decode(self, q):
        """[B, D, L, J] -> normalised motion [B, T, J, 3]."""
        return self._windowed(self.decoder, q, self.latent_window).permute(0, 2, 3, 1)

    def forward(self, motion):
        z = self.encode(motion)
        q, idx = self.quantize(z)
        return self.decode(q), idx, z
