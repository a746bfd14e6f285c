"""InceptionV3 pool3 features for FID: the pytorch-fid variant (`FIDInceptionA/C/E`, weights
`pt_inception-2015-12-05-6726825d.pth`, ported from the TensorFlow FID graph).

Architecture facts the FID variant differs by from torchvision's InceptionV3:
  * the average-pool branches of the A, C and first E blocks exclude the zero padding from the
    count (`count_include_pad=False`, as TF's pooling);
  * the last E block (`Mixed_7c`) pools its branch with a 3 × 3 *max* pool (stride 1, pad 1);
  * 1008 output classes (the TF graph's), no auxiliary head.
Input: `[N, H, W, 3]` in [0, 1], bilinearly resized to 299 × 299 (PyTorch `F.interpolate`,
align_corners=False), scaled to [-1, 1]. Every conv is BasicConv2d: conv without bias, batch norm
(eps 1e-3), ReLU. Output: `{"pool": [N, 2048]` (global average of `Mixed_7c`, the FID features),
`"logits": [N, num_classes]}` (the `fc` layer; unused by FID but part of the weights).

Parameter paths mirror pytorch-fid's module names: `Mixed_5b/branch5x5_1/conv/kernel`,
`.../bn/{scale,bias,mean,var}`, `fc/{kernel,bias}`. `INCEPTION_BLOCKS` and `BLOCK_CONVS` are the
single description of the structure, used by the modules and by the converter's name table.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mtvjax.evaluate.feature_nets.layers import (ZEROS, FrozenBatchNorm, avg_pool_exclude_pad,
                                            max_pool, unit_images_to_signed)

FID_RESOLUTION = 299
BN_EPS = 1e-3

# (name, block type, argument): stem convs carry (out, kernel, stride, padding); A: pool
# features; C: channels_7x7; B, D, E_1, E_2: none. "pool" entries are 3 × 3 stride-2 max pools.
INCEPTION_BLOCKS = (
    ("Conv2d_1a_3x3", "conv", (32, (3, 3), 2, (0, 0))),
    ("Conv2d_2a_3x3", "conv", (32, (3, 3), 1, (0, 0))),
    ("Conv2d_2b_3x3", "conv", (64, (3, 3), 1, (1, 1))),
    ("maxpool1", "pool", None),
    ("Conv2d_3b_1x1", "conv", (80, (1, 1), 1, (0, 0))),
    ("Conv2d_4a_3x3", "conv", (192, (3, 3), 1, (0, 0))),
    ("maxpool2", "pool", None),
    ("Mixed_5b", "A", 32),
    ("Mixed_5c", "A", 64),
    ("Mixed_5d", "A", 64),
    ("Mixed_6a", "B", None),
    ("Mixed_6b", "C", 128),
    ("Mixed_6c", "C", 160),
    ("Mixed_6d", "C", 160),
    ("Mixed_6e", "C", 192),
    ("Mixed_7a", "D", None),
    ("Mixed_7b", "E_1", None),
    ("Mixed_7c", "E_2", None),
)


def block_convs(kind: str, arg) -> list[tuple]:
    """(conv name, out channels, kernel, stride, padding) of one inception block, in order."""
    one, three = (1, 1), (3, 3)
    if kind == "A":
        return [("branch1x1", 64, one, 1, (0, 0)),
                ("branch5x5_1", 48, one, 1, (0, 0)), ("branch5x5_2", 64, (5, 5), 1, (2, 2)),
                ("branch3x3dbl_1", 64, one, 1, (0, 0)), ("branch3x3dbl_2", 96, three, 1, (1, 1)),
                ("branch3x3dbl_3", 96, three, 1, (1, 1)), ("branch_pool", arg, one, 1, (0, 0))]
    if kind == "B":
        return [("branch3x3", 384, three, 2, (0, 0)),
                ("branch3x3dbl_1", 64, one, 1, (0, 0)), ("branch3x3dbl_2", 96, three, 1, (1, 1)),
                ("branch3x3dbl_3", 96, three, 2, (0, 0))]
    if kind == "C":
        c7 = arg
        return [("branch1x1", 192, one, 1, (0, 0)),
                ("branch7x7_1", c7, one, 1, (0, 0)), ("branch7x7_2", c7, (1, 7), 1, (0, 3)),
                ("branch7x7_3", 192, (7, 1), 1, (3, 0)),
                ("branch7x7dbl_1", c7, one, 1, (0, 0)), ("branch7x7dbl_2", c7, (7, 1), 1, (3, 0)),
                ("branch7x7dbl_3", c7, (1, 7), 1, (0, 3)),
                ("branch7x7dbl_4", c7, (7, 1), 1, (3, 0)),
                ("branch7x7dbl_5", 192, (1, 7), 1, (0, 3)), ("branch_pool", 192, one, 1, (0, 0))]
    if kind == "D":
        return [("branch3x3_1", 192, one, 1, (0, 0)), ("branch3x3_2", 320, three, 2, (0, 0)),
                ("branch7x7x3_1", 192, one, 1, (0, 0)), ("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
                ("branch7x7x3_3", 192, (7, 1), 1, (3, 0)), ("branch7x7x3_4", 192, three, 2, (0, 0))]
    if kind in ("E_1", "E_2"):
        return [("branch1x1", 320, one, 1, (0, 0)),
                ("branch3x3_1", 384, one, 1, (0, 0)), ("branch3x3_2a", 384, (1, 3), 1, (0, 1)),
                ("branch3x3_2b", 384, (3, 1), 1, (1, 0)),
                ("branch3x3dbl_1", 448, one, 1, (0, 0)), ("branch3x3dbl_2", 384, three, 1, (1, 1)),
                ("branch3x3dbl_3a", 384, (1, 3), 1, (0, 1)),
                ("branch3x3dbl_3b", 384, (3, 1), 1, (1, 0)), ("branch_pool", 192, one, 1, (0, 0))]
    raise ValueError(f"unknown inception block type {kind!r}")


def all_convs(width_divisor: int = 1) -> list[tuple]:
    """(module path, out channels) of every BasicConv2d of the network, in order."""
    out = []
    for name, kind, arg in INCEPTION_BLOCKS:
        if kind == "conv":
            out.append(((name,), arg[0] // width_divisor))
        elif kind != "pool":
            out += [((name, conv), ch // width_divisor) for conv, ch, *_ in block_convs(kind, arg)]
    return out


def _divisible(width_divisor: int) -> None:
    bad = sorted({ch for _, ch in all_convs(1) if ch % width_divisor})
    if bad:
        raise ValueError(f"width_divisor {width_divisor} does not divide widths {bad}")


class BasicConv2d(nn.Module):
    features: int
    kernel: tuple
    stride: int = 1
    padding: tuple = (0, 0)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                    padding=tuple((p, p) for p in self.padding), use_bias=False,
                    kernel_init=ZEROS, name="conv")(x)
        return nn.relu(FrozenBatchNorm(BN_EPS, name="bn")(x))


class InceptionBlock(nn.Module):
    """One of the FID variant's blocks (A, B, C, D, E_1, E_2); convs named as in pytorch-fid."""

    kind: str
    arg: int | None = None
    width_divisor: int = 1

    @nn.compact
    def __call__(self, x):
        c = {name: BasicConv2d(ch // self.width_divisor, k, s, p, name=name)
             for name, ch, k, s, p in block_convs(self.kind, self.arg)}

        def chain(*names):
            y = x
            for n in names:
                y = c[n](y)
            return y

        if self.kind == "A":
            pool = c["branch_pool"](avg_pool_exclude_pad(x, (3, 3), (1, 1)))
            return jnp.concatenate([chain("branch1x1"), chain("branch5x5_1", "branch5x5_2"),
                                    chain("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                                    pool], axis=-1)
        if self.kind == "B":
            return jnp.concatenate([chain("branch3x3"),
                                    chain("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                                    max_pool(x, (3, 3), (2, 2))], axis=-1)
        if self.kind == "C":
            pool = c["branch_pool"](avg_pool_exclude_pad(x, (3, 3), (1, 1)))
            return jnp.concatenate([
                chain("branch1x1"), chain("branch7x7_1", "branch7x7_2", "branch7x7_3"),
                chain("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4",
                      "branch7x7dbl_5"), pool], axis=-1)
        if self.kind == "D":
            return jnp.concatenate([
                chain("branch3x3_1", "branch3x3_2"),
                chain("branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
                max_pool(x, (3, 3), (2, 2))], axis=-1)
        # E_1 / E_2
        b3 = c["branch3x3_1"](x)
        b3 = jnp.concatenate([c["branch3x3_2a"](b3), c["branch3x3_2b"](b3)], axis=-1)
        bd = chain("branch3x3dbl_1", "branch3x3dbl_2")
        bd = jnp.concatenate([c["branch3x3dbl_3a"](bd), c["branch3x3dbl_3b"](bd)], axis=-1)
        if self.kind == "E_1":
            pooled = avg_pool_exclude_pad(x, (3, 3), (1, 1))
        else:
            pooled = max_pool(x, (3, 3), (1, 1), padding=(1, 1))
        return jnp.concatenate([chain("branch1x1"), b3, bd, c["branch_pool"](pooled)], axis=-1)


class InceptionV3(nn.Module):
    """pytorch-fid's `InceptionV3([3])` (FID pool3 features) plus the `fc` logits."""

    width_divisor: int = 1
    num_classes: int = 1008

    @nn.compact
    def __call__(self, images, resolution: int | None = FID_RESOLUTION):
        """`images [N, H, W, 3]` in [0, 1] → {"pool": [N, 2048/d], "logits": [N, classes]};
        `resolution=None` skips the resize (the input must then be at least 75 × 75)."""
        _divisible(self.width_divisor)
        x = unit_images_to_signed(images, resolution)
        for name, kind, arg in INCEPTION_BLOCKS:
            if kind == "conv":
                out, k, s, p = arg
                x = BasicConv2d(out // self.width_divisor, k, s, p, name=name)(x)
            elif kind == "pool":
                x = max_pool(x, (3, 3), (2, 2))
            else:
                x = InceptionBlock(kind, arg, self.width_divisor, name=name)(x)
        pool = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, kernel_init=ZEROS, name="fc")(pool)
        return {"pool": pool, "logits": logits}
