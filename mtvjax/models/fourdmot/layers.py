"""Building blocks of the 4DMoT encoder and decoder on `[batch, frames, joints, channels]`.

Frames play the role of image height and joints of image width; all convolutions zero-pad like
the released PyTorch model. Temporal resampling keeps the first frame of odd-length windows
apart, so a window of `1 + 4k` frames maps to `1 + k` latent frames and back. Every convolution
is a `WindowConv` (`nn.Conv`'s parameters and result; `conv_impl` picks how it is computed).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mtvjax.models.fourdmot.window_conv import WindowConv


def resblock_dilation(out_channels: int, reference_width: int = 512) -> int:
    """Dilation of a ResBlock's 3x3 conv: 3 for 128-channel blocks, 1 for 512-channel blocks."""
    return max(1, reference_width // out_channels - 1)


def temporal_avg_pool2(x: jnp.ndarray) -> jnp.ndarray:
    """Halves the frame axis by averaging pairs; an odd count keeps the first frame as it is."""
    frames = x.shape[1]
    head, body = (x[:, :1], x[:, 1:]) if frames % 2 else (x[:, :0], x)
    pooled = body.reshape(body.shape[0], body.shape[1] // 2, 2, *body.shape[2:]).mean(axis=2)
    return jnp.concatenate([head, pooled], axis=1)


@functools.lru_cache(maxsize=None)
def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` linear-interpolation weights with align_corners=True."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out) * scale
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in), np.float64)
    np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights.astype(np.float32)


def temporal_upsample2(x: jnp.ndarray) -> jnp.ndarray:
    """Doubles the frame axis by linear interpolation with aligned corners.

    A count that is odd and above 1 keeps the first frame as it is and doubles the rest.
    """
    frames = x.shape[1]
    head, body = (x[:, :1], x[:, 1:]) if frames % 2 and frames > 1 else (x[:, :0], x)
    weights = jnp.asarray(_align_corners_matrix(body.shape[1], 2 * body.shape[1]), x.dtype)
    upsampled = jnp.einsum("ot,btjc->bojc", weights, body, precision="highest")
    return jnp.concatenate([head, upsampled], axis=1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → 3x3 dilated conv → GroupNorm → SiLU → 1x1 conv, plus a residual."""

    features: int
    num_groups: int = 32
    dilation_reference: int = 512
    conv_impl: str = "matmul"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = resblock_dilation(self.features, self.dilation_reference)
        h = nn.GroupNorm(self.num_groups, epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        h = nn.silu(h)
        h = WindowConv(self.features, (3, 3), d, self.conv_impl, self.dtype, name="conv1")(h)
        h = nn.GroupNorm(self.num_groups, epsilon=1e-6, dtype=self.dtype, name="norm2")(h)
        h = nn.silu(h)
        h = WindowConv(self.features, (1, 1), 1, self.conv_impl, self.dtype, name="conv2")(h)
        if x.shape[-1] != self.features:
            x = WindowConv(self.features, (1, 1), 1, self.conv_impl, self.dtype,
                           name="conv_short")(x)
        return x + h


class JointConv(nn.Module):
    """1-D convolution over the joint axis, applied to every frame on its own."""

    features: int
    kernel_size: int = 3
    conv_impl: str = "matmul"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return WindowConv(self.features, (1, self.kernel_size), 1, self.conv_impl, self.dtype,
                          name="conv")(x)
