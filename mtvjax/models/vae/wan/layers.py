"""Building blocks of the Wan 2.1 video VAE, channel-last `[B, T, H, W, C]`, with an explicit
causal feature cache.

Every temporal convolution is causal: a kernel of 3 frames sees the current frame and the two
before it, with zeros before the first frame. Videos are processed in chunks; between chunks each
such convolution carries its last `CACHE_T = 2` input frames (`cache`), so the result does not
depend on how the frames after the first chunk are split into chunks. A block's
`__call__(x, cache)` returns `(y, new_cache)`; `cache` is None for the first chunk (zeros before
frame 0) and otherwise the nested dict the previous chunk returned (same structure, fixed
shapes, so the steady-state chunk function compiles once).

Two layers treat the first chunk specially (as the released Wan VAE / diffusers do):

* `downsample3d` (encoder): first chunk — no temporal conv (its frame passes through, so frame 0
  of the video becomes latent frame 0 on its own); later chunks — a 3-frame stride-2 conv over
  [last frame of the previous chunk, this chunk], cache = the last frame.
* `upsample3d` (decoder): first chunk — no temporal conv (1 latent frame → 1 frame); later
  chunks — a causal 3-frame conv to 2·C channels whose halves become frames 2t and 2t+1, with a
  cache that starts as zeros (the first chunk does not enter it).

Parameters (float32 by default): conv kernels `[kt, kh, kw, in, out]` (3-D) or `[kh, kw, in,
out]` (per-frame 2-D), RMS-norm `gamma [C]`, attention `to_qkv` / `proj` as dense kernels.
Norms and the attention softmax compute in float32; other arithmetic in the compute `dtype`.
Every layer but the norm is a `WanLayer`: keyword-only `dtype`, `param_dtype` and `precision`,
handed on to its sublayers (`layer_kwargs`); `run_cached` threads the cache through a sequence.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CACHE_T = 2
Dtype = Any


class WanLayer(nn.Module):
    """Base of the layers: compute dtype, parameter dtype and conv/matmul precision."""

    _: dataclasses.KW_ONLY
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @property
    def layer_kwargs(self) -> dict:
        """The three fields, for the sublayers."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)


def run_cached(layers, x, cache):
    """`x` through `layers` (named modules `(x, cache) -> (x, new cache)`) in order, each given
    its entry of `cache` (None: the first chunk). Returns (x, {name: new cache})."""
    cache, new = cache or {}, {}
    for layer in layers:
        x, new[layer.name] = layer(x, cache.get(layer.name))
    return x, new


class CausalConv3d(WanLayer):
    """Conv3d with kernel (kt, k, k): time padded causally (kt − 1 frames before, from the cache
    or zeros), space padded symmetrically by k // 2. Returns (y, cache) — cache None for kt = 1."""

    features: int
    kernel: tuple = (3, 3, 3)

    @nn.compact
    def __call__(self, x, cache=None):
        kt, kh, kw = self.kernel
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kt, kh, kw, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        new_cache = None
        if kt > 1:
            if kt - 1 != CACHE_T:
                raise ValueError(f"causal kernel of {kt} frames; the cache holds {CACHE_T}")
            if cache is None:
                cache = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], x.dtype)
            x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
            new_cache = x[:, -CACHE_T:]
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), (1, 1, 1),
            ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=self.precision)
        return y + bias.astype(self.dtype), new_cache


class RMSNorm(nn.Module):
    """x / max(‖x‖, 1e-12) · √C · γ over channels (F.normalize-based WanRMS_norm, no bias), in
    float32, cast back to the input dtype."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (c,), self.param_dtype)
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
        y = xf / jnp.maximum(norm, 1e-12) * (c ** 0.5) * gamma.astype(jnp.float32)
        return y.astype(x.dtype)


class ResidualBlock(WanLayer):
    """RMS → SiLU → causal conv → RMS → SiLU → causal conv, plus a 1×1×1 shortcut conv when the
    width changes. Cache: {"conv1", "conv2"} (their inputs' last 2 frames)."""

    features: int

    @nn.compact
    def __call__(self, x, cache=None):
        kw = self.layer_kwargs
        cache = cache or {}
        h = x
        if x.shape[-1] != self.features:
            h, _ = CausalConv3d(self.features, (1, 1, 1), name="conv_shortcut", **kw)(x)
        y = nn.silu(RMSNorm(self.param_dtype, name="norm1")(x))
        y, c1 = CausalConv3d(self.features, name="conv1", **kw)(y, cache.get("conv1"))
        y = nn.silu(RMSNorm(self.param_dtype, name="norm2")(y))
        y, c2 = CausalConv3d(self.features, name="conv2", **kw)(y, cache.get("conv2"))
        return y + h, {"conv1": c1, "conv2": c2}


class AttentionBlock(WanLayer):
    """Single-head self-attention over the H·W positions of each frame (no mixing across frames):
    RMS norm, 1×1 qkv projection (q, k, v = channel thirds), softmax(q·kᵀ/√C)·v, 1×1 output
    projection, residual. No cache."""


    @nn.compact
    def __call__(self, x):
        b, t, h, w, c = x.shape
        kw = self.layer_kwargs
        y = RMSNorm(self.param_dtype, name="norm")(x).reshape(b * t, h * w, c)
        q, k, v = jnp.split(nn.Dense(3 * c, name="to_qkv", **kw)(y), 3, axis=-1)
        logits = jnp.einsum("bqc,bkc->bqk", q, k, precision=self.precision,
                            preferred_element_type=jnp.float32) / (c ** 0.5)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        y = jnp.einsum("bqk,bkc->bqc", probs, v, precision=self.precision)
        y = nn.Dense(c, name="proj", **kw)(y)
        return x + y.reshape(b, t, h, w, c).astype(x.dtype)


class Resample(WanLayer):
    """Spatial ×2 down/up-sampling per frame, with the temporal ×2 step for the 3-D modes.

    * ``downsample2d`` / ``downsample3d``: zero-pad right/bottom by 1, 3×3 conv stride 2 (same
      width); 3-D adds `time_conv` (3, 1, 1) stride (2, 1, 1), cache = last frame.
    * ``upsample2d`` / ``upsample3d``: nearest ×2, 3×3 conv (pad 1) to `out_features`; 3-D first
      applies the causal `time_conv` (3, 1, 1) to 2·C channels (cache = 2 frames).
    """

    mode: str
    features: int            # input (= downsample output) width
    out_features: int | None = None   # upsample output width (default features // 2)

    @nn.compact
    def __call__(self, x, cache=None):
        kw = self.layer_kwargs
        c = self.features
        new_cache = None
        if self.mode == "upsample3d":
            # first chunk: no temporal conv; the cache starts as zeros (the released "Rep" mark)
            if cache is None:
                new_cache = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], x.dtype)
            else:
                y, new_cache = CausalConv3d(2 * c, (3, 1, 1), name="time_conv", **kw)(x, cache)
                b, t, h, w, _ = y.shape
                # channels [0, C) → frame 2t, [C, 2C) → frame 2t + 1
                x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5)
                x = x.reshape(b, 2 * t, h, w, c)
        b, t, h, w, _ = x.shape
        frames = x.reshape(b * t, h, w, x.shape[-1])
        if self.mode.startswith("upsample"):
            frames = jnp.repeat(jnp.repeat(frames, 2, axis=1), 2, axis=2)
            out = self.out_features or c // 2
            frames = nn.Conv(out, (3, 3), padding=((1, 1), (1, 1)), name="resample", **kw)(frames)
        elif self.mode.startswith("downsample"):
            frames = jnp.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0)))
            frames = nn.Conv(c, (3, 3), strides=(2, 2), padding="VALID", name="resample",
                             **kw)(frames)
        else:
            raise ValueError(f"unknown resample mode {self.mode!r}")
        x = frames.reshape((b, t) + frames.shape[1:])
        if self.mode == "downsample3d":
            new_cache = x[:, -1:]
            if cache is not None:   # first chunk: no temporal conv
                x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
                if x.shape[1] % 2 != 1:
                    raise ValueError(f"downsample3d needs an even number of frames per chunk "
                                     f"after the first, got {x.shape[1] - 1}")
                x = nn.Conv(c, (3, 1, 1), strides=(2, 1, 1), padding="VALID", name="time_conv",
                            **kw)(x)
        return x, new_cache


class MidBlock(WanLayer):
    """ResidualBlock → AttentionBlock → ResidualBlock at constant width."""


    @nn.compact
    def __call__(self, x, cache=None):
        kw = self.layer_kwargs
        cache = cache or {}
        c = x.shape[-1]
        x, c0 = ResidualBlock(c, name="resnets_0", **kw)(x, cache.get("resnets_0"))
        x = AttentionBlock(name="attentions_0", **kw)(x)
        x, c1 = ResidualBlock(c, name="resnets_1", **kw)(x, cache.get("resnets_1"))
        return x, {"resnets_0": c0, "resnets_1": c1}


class UpBlock(WanLayer):
    """Decoder level: `num_res` ResidualBlocks to `features`, then an optional Resample
    (`upsample2d` / `upsample3d` to features // 2). Cache keys: resnets_i, upsampler."""

    features: int
    num_res: int
    upsample: str | None = None

    @nn.compact
    def __call__(self, x, cache=None):
        kw = self.layer_kwargs
        layers = [ResidualBlock(self.features, name=f"resnets_{j}", **kw)
                  for j in range(self.num_res)]
        if self.upsample is not None:
            layers.append(Resample(self.upsample, self.features, name="upsampler", **kw))
        return run_cached(layers, x, cache)
