"""Layers of the CogVideoX video VAE on channel-last video `[B, T, H, W, C]`.

* `CausalConv3d`: a 3-D convolution that is causal in time. Before the first chunk of a video the
  input is padded in front with `k - 1` copies of its first frame; after that with the last
  `k - 1` frames of the previous chunk's padded input (the *conv cache*, returned next to the
  output). Height and width are zero-padded by `(k - 1) // 2`. A 1×1×1 convolution keeps no cache.
* `GroupNorm`: statistics per sample and group over (frames, height, width, channels of the
  group) — the whole chunk, as torch's GroupNorm on a 5-D tensor; computed in float32.
* `SpatialNorm3D`: GroupNorm modulated by two 1×1×1 convolutions of the latents `zq`, resized by
  nearest neighbour to the feature's size (an odd frame count > 1 resizes the first frame apart;
  the convolutions run before the resize, at the latents' resolution: the same values).
* `Downsample`: optional temporal ×2 average pooling (an odd frame count keeps the first frame),
  then a per-frame 3×3 stride-2 convolution on the frame zero-padded by one row and column at
  the bottom and right.
* `Upsample`: nearest ×2 in height and width, and in time when `compress_time` (an odd frame
  count > 1 doubles all frames but the first; a single frame stays single), then a per-frame
  3×3 convolution padded by 1.
* `frame_chunks`, `blend`, `tiled_apply`: the frame-batching and spatial-tiling loops.

Kernels are channel-last: 3-D `[kt, kh, kw, in, out]`, 2-D `[kh, kw, in, out]`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# torch's default Conv init (kaiming_uniform with a = √5): U(±1/√fan_in).
CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
DIMS_3D = ("NDHWC", "DHWIO", "NDHWC")


def conv3d(x, kernel, padding, strides=(1, 1, 1), precision: Any = lax.Precision.HIGHEST):
    """`x [B, T, H, W, I]` ⊛ `kernel [kt, kh, kw, I, O]` with explicit `padding` per axis."""
    return lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding,
                                    dimension_numbers=DIMS_3D, precision=precision)


def nearest_resize(x, axis: int, size: int):
    """Nearest-neighbour resize along `axis` as torch's `interpolate(mode="nearest", size=...)`:
    source index `floor(i · in / out)` in float32."""
    n = x.shape[axis]
    if size == n:
        return x
    if size % n == 0:
        return jnp.repeat(x, size // n, axis=axis)
    scale = np.float32(n / size)
    index = np.minimum(np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int64), n - 1)
    return jnp.take(x, index, axis=axis)


def resize_video(x, frames: int, height: int, width: int):
    """`[B, T, h, w, C]` → `[B, frames, height, width, C]` by nearest neighbour."""
    for axis, size in ((1, frames), (2, height), (3, width)):
        x = nearest_resize(x, axis, size)
    return x


class CausalConv3d(nn.Module):
    """Causal in time (module docstring); `__call__(x, cache) -> (y, new_cache)`."""

    features: int
    kernel_size: int = 3
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x, cache=None):
        k = self.kernel_size
        kernel = self.param("kernel", CONV_INIT, (k, k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        new_cache = None
        if k > 1:
            front = cache if cache is not None else jnp.repeat(x[:, :1], k - 1, axis=1)
            x = jnp.concatenate([front.astype(x.dtype), x], axis=1)
            new_cache = x[:, -(k - 1):]
        p = (k - 1) // 2
        y = conv3d(x, kernel, [(0, 0), (p, p), (p, p)], precision=self.precision)
        y = y + bias.astype(y.dtype)
        return y, new_cache


class PointwiseConv3d(nn.Module):
    """A 1×1×1 convolution (kernel `[1, 1, 1, in, out]`), e.g. a ResNet shortcut."""

    features: int
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", CONV_INIT, (1, 1, 1, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.einsum("...i,io->...o", x, kernel[0, 0, 0].astype(x.dtype),
                       precision=self.precision)
        return y + bias.astype(y.dtype)


class GroupNorm(nn.Module):
    """GroupNorm over (T, H, W, C/G) per sample and group; float32 statistics."""

    groups: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if c % self.groups:
            raise ValueError(f"GroupNorm: {c} channels do not split into {self.groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        xf = x.astype(jnp.float32).reshape(x.shape[:-1] + (self.groups, c // self.groups))
        spatial = tuple(range(2, xf.ndim - 2))            # H, W first: shorter float32 sums
        mean = xf.mean(spatial, keepdims=True).mean((1, xf.ndim - 1), keepdims=True)
        centred = xf - mean
        var = jnp.square(centred).mean(spatial, keepdims=True).mean((1, xf.ndim - 1),
                                                                   keepdims=True)
        y = (centred * lax.rsqrt(var + self.eps)).reshape(x.shape)
        return (y * scale + bias).astype(x.dtype)


def _modulate(x, y, b):
    """`x · resize(y) + resize(b)`, `y`/`b` nearest-resized to `x`'s frames, height and width;
    whole ratios broadcast instead of materialising the resized tensors."""
    (n, t, h, w, c), (_, tz, hz, wz, _) = x.shape, y.shape
    if t % tz or h % hz or w % wz:
        return x * resize_video(y, t, h, w) + resize_video(b, t, h, w)
    grid = (n, tz, t // tz, hz, h // hz, wz, w // wz, c)
    y, b = (v[:, :, None, :, None, :, None, :] for v in (y, b))
    return (x.reshape(grid) * y + b).reshape(x.shape)


class SpatialNorm3D(nn.Module):
    """`GroupNorm(f) · conv_y(zq) + conv_b(zq)` with `zq` resized to `f` (module docstring)."""

    groups: int
    eps: float = 1e-6
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, f, zq):
        # the 1×1×1 convs commute with nearest resizing: they run at the latents' resolution
        zq = zq.astype(f.dtype)
        c = f.shape[-1]
        y, _ = CausalConv3d(c, 1, self.precision, name="conv_y")(zq)
        b, _ = CausalConv3d(c, 1, self.precision, name="conv_b")(zq)
        norm = GroupNorm(self.groups, self.eps, name="norm_layer")(f)
        t = f.shape[1]
        if t > 1 and t % 2 == 1:        # the first frame apart
            return jnp.concatenate([_modulate(norm[:, :1], y[:, :1], b[:, :1]),
                                    _modulate(norm[:, 1:], y[:, 1:], b[:, 1:])], axis=1)
        return _modulate(norm, y, b)


def _frame_conv2d(x, kernel, padding, stride: int, precision):
    """A 2-D convolution `kernel [kh, kw, I, O]` applied to every frame of `x [B, T, H, W, I]`."""
    return conv3d(x, kernel[None], [(0, 0)] + list(padding), (1, stride, stride), precision)


def temporal_avg_pool2(x):
    """Averages pairs of frames; an odd count keeps the first frame as it is (a trailing frame
    without a partner is dropped, as torch's avg_pool1d does)."""
    t = x.shape[1]
    head, body = (x[:, :1], x[:, 1:]) if t % 2 else (x[:, :0], x)
    n = body.shape[1] // 2
    if n:
        body = body[:, :2 * n].reshape(body.shape[0], n, 2, *body.shape[2:])
        body = (body[:, :, 0] + body[:, :, 1]) / 2
    else:
        body = body[:, :0]
    return jnp.concatenate([head, body], axis=1)


class FrameConv(nn.Module):
    """Base of `Downsample` / `Upsample`: `resample(x)`, then a per-frame 3×3 convolution
    (kernel `[3, 3, in, out]`, bias) with the class's `PADDING` (height, width) and `STRIDE`."""

    features: int
    compress_time: bool = False
    precision: Any = lax.Precision.HIGHEST
    PADDING = ((1, 1), (1, 1))
    STRIDE = 1

    def resample(self, x):
        raise NotImplementedError

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", CONV_INIT, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = _frame_conv2d(self.resample(x), kernel, self.PADDING, self.STRIDE, self.precision)
        return y + bias.astype(y.dtype)


class Downsample(FrameConv):
    """[temporal ×2 pooling], then 3×3 stride 2 per frame (module docstring)."""

    PADDING = ((0, 1), (0, 1))
    STRIDE = 2

    def resample(self, x):
        return temporal_avg_pool2(x) if self.compress_time else x


class Upsample(FrameConv):
    """Nearest ×2 [in time too], then 3×3 per frame (module docstring)."""

    def resample(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        t = x.shape[1]
        if self.compress_time and t > 1:
            if t % 2 == 1:
                x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], 2, axis=1)], axis=1)
            else:
                x = jnp.repeat(x, 2, axis=1)
        return x


def silu(x):
    return jax.nn.silu(x)


# ----------------------------------------------------------------------------------------------
# Frame batching and spatial tiling (host-side loops around jitted chunk functions)
# ----------------------------------------------------------------------------------------------


def frame_chunks(num_frames: int, batch: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk: `max(T // batch, 1)` chunks, the first taking `T mod batch`
    extra frames (diffusers' `_encode` / `_decode`)."""
    rem = num_frames % batch
    return [(0 if i == 0 else batch * i + rem, min(batch * (i + 1) + rem, num_frames))
            for i in range(max(num_frames // batch, 1))]


def blend(a, b, extent: int, axis: int):
    """`b` with its first `extent` rows along `axis` faded in from the last rows of `a`:
    `a[-e + y]·(1 − y/e) + b[y]·(y/e)`."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return b
    y = np.arange(extent, dtype=np.float64) / extent
    shape = [1] * b.ndim
    shape[axis] = extent
    wa = jnp.asarray((1 - y).astype(np.float32).reshape(shape))
    wb = jnp.asarray(y.astype(np.float32).reshape(shape))
    tail = lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
    head = lax.slice_in_dim(b, 0, extent, axis=axis)
    rest = lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)
    return jnp.concatenate([(tail * wa + head * wb).astype(b.dtype), rest], axis=axis)


def _crop(t, h: int, w: int):
    return t[:, :, :h, :w]


def tiled_apply(run, x, tile: tuple, step: tuple, extent: tuple, limit: tuple):
    """Runs `run` on overlapping `tile`-sized spatial tiles of `x [B, T, H, W, C]` starting every
    `step` (input units), blends each result with the (blended) tile above and to its left over
    `extent` rows / columns (output units) and keeps the first `limit` of each."""
    height, width = x.shape[2], x.shape[3]
    above, out_rows = None, []
    for i in range(0, height, step[0]):
        row = []
        for j in range(0, width, step[1]):
            t = run(x[:, :, i:i + tile[0], j:j + tile[1]])
            if above is not None:
                t = blend(above[len(row)], t, extent[0], axis=2)
            if row:
                t = blend(row[-1], t, extent[1], axis=3)
            row.append(t)
        out_rows.append(jnp.concatenate([_crop(t, *limit) for t in row], axis=3))
        above = row
    return jnp.concatenate(out_rows, axis=2)
