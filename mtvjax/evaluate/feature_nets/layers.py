"""Layers shared by the feature networks of the video metrics (LPIPS, InceptionV3, I3D):
inference batch norm, PyTorch-exact bilinear resizing and pooling, the [0, 1] → [-1, 1] input
preparation.

Weights always come from a converted checkpoint, so layers start from zeros (`ZEROS`), which is
also the cheapest to trace when only the parameter shapes are wanted. Batch norm keeps `scale`,
`bias`, `mean` and `var` all in `params`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ZEROS = nn.initializers.zeros


class FrozenBatchNorm(nn.Module):
    """Inference batch norm `(x - mean) / sqrt(var + eps) * scale + bias` over the last axis."""

    eps: float = 1e-3

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", ZEROS, (c,))
        mean = self.param("mean", ZEROS, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


@functools.lru_cache(maxsize=64)
def resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """`[out, in]` weights of 1-D bilinear resampling as PyTorch's
    `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing): source coordinate
    `(i + 0.5) · in/out - 0.5`, clamped at 0, the next sample clamped at the edge."""
    m = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m.astype(np.float32)


def resize_bilinear(x, size: Sequence[int]):
    """Resizes `[..., H, W, C]` to `size = (h, w)` like PyTorch's bilinear `F.interpolate`
    (align_corners=False, no antialias). Works on numpy and JAX arrays (returns the same kind)."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-3:-1] == (h, w):
        return x
    mh, mw = resize_matrix(h, x.shape[-3]), resize_matrix(w, x.shape[-2])
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.einsum("oh,...hwc->...owc", mh, x.astype(np.float32))
    return xp.einsum("pw,...owc->...opc", mw, x)


def avg_pool_exclude_pad(x, window: Sequence[int], padding: Sequence[int]):
    """Stride-1 average pooling over the spatial axes of `[N, *spatial, C]` with zero padding
    excluded from the count (PyTorch `count_include_pad=False`)."""
    dims = (1,) + tuple(window) + (1,)
    pads = ((0, 0),) + tuple((p, p) for p in padding) + ((0, 0),)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, (1,) * x.ndim, pads)
    ones = jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, (1,) * x.ndim, pads)
    return total / count


def max_pool(x, window: Sequence[int], strides: Sequence[int], padding=None, pad_value=-jnp.inf):
    """Max pooling over the spatial axes of `[N, *spatial, C]`, floor mode; `padding` a
    symmetric per-axis amount or per-axis (front, back) pairs, filled with `pad_value`."""
    if padding:
        pairs = [p if isinstance(p, (tuple, list)) else (p, p) for p in padding]
        x = jnp.pad(x, ((0, 0),) + tuple(tuple(p) for p in pairs) + ((0, 0),),
                    constant_values=pad_value)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1,) + tuple(window) + (1,),
                                 (1,) + tuple(strides) + (1,), "VALID")


def torch_padding(p: int):
    """PyTorch's symmetric 2-D conv padding `p` as Flax `((p, p), (p, p))`."""
    return ((p, p), (p, p))


def unit_images_to_signed(x, resolution: int | None):
    """Network input from pixels in [0, 1] `[..., H, W, 3]`: float32, resized to
    `resolution × resolution` (when given) like PyTorch's bilinear `F.interpolate`, then scaled
    to [-1, 1]."""
    x = x.astype(jnp.float32)
    if resolution:
        x = resize_bilinear(x, (resolution, resolution))
    return 2.0 * x - 1.0
