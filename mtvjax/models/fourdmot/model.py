"""4DMoT: the VQ-VAE that turns SMPL joint motion into discrete 4D motion tokens.

Input motion is normalised `[batch, frames, 24, 3]`; the encoder maps it to
`[batch, latent_frames, 24, code_dim]`, one token per (latent frame, joint). Both halves run over
sliding windows (`window_frames` frames, `window_frames / 2**stages` latent frames) whose first
window also takes the remainder; all windows of a batch are encoded as one batched call. The
quantizer state (`quantizer` collection) is declared by the `codebook` submodule and updated by
the pure functions of `mtvjax.models.fourdmot.quantizer`.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtvjax.models.fourdmot import quantizer as vq
from mtvjax.models.fourdmot.layers import (JointConv, ResBlock, temporal_avg_pool2,
                                           temporal_upsample2)
from mtvjax.models.fourdmot.window_conv import WindowConv


def split_windows(x: jnp.ndarray, window: int):
    """Cuts `[B, T, ...]` into a first window of `window + T % window` frames and the rest.

    Returns `(first [B, window + r, ...], rest [B * (n - 1), window, ...] or None)`.
    """
    batch, frames = x.shape[:2]
    n, r = divmod(frames, window)
    if n == 0:
        raise ValueError(f"motion has {frames} frames; 4DMoT needs at least one window of {window}")
    first = x[:, :window + r]
    if n == 1:
        return first, None
    rest = x[:, window + r:].reshape(batch * (n - 1), window, *x.shape[2:])
    return first, rest


def merge_windows(first: jnp.ndarray, rest: jnp.ndarray | None, batch: int) -> jnp.ndarray:
    """Inverse of `split_windows` on the per-window outputs: concatenates along frames."""
    if rest is None:
        return first
    rest = rest.reshape(batch, -1, *rest.shape[2:])
    return jnp.concatenate([first, rest], axis=1)


def latent_frames(frames: int, window: int, stages: int = 2) -> int:
    """Latent frame count 4DMoT gives for a clip of `frames` frames."""
    def pooled(t):
        for _ in range(stages):
            t = 1 + (t - 1) // 2 if t % 2 else t // 2
        return t
    n, r = divmod(frames, window)
    if n == 0:
        raise ValueError(f"{frames} frames is fewer than one window of {window}")
    return pooled(window + r) + (n - 1) * pooled(window)


def decoded_frames(latents: int, latent_window: int, stages: int = 2) -> int:
    """Frame count the decoder gives for `latents` latent frames."""
    def upsampled(t):
        for _ in range(stages):
            t = 1 + 2 * (t - 1) if t % 2 and t > 1 else 2 * t
        return t
    n, r = divmod(latents, latent_window)
    if n == 0:
        raise ValueError(f"{latents} latent frames is fewer than one window of {latent_window}")
    return upsampled(latent_window + r) + (n - 1) * upsampled(latent_window)


_RESAMPLE = {"down": temporal_avg_pool2, "up": temporal_upsample2}


class ConvStack(nn.Module):
    """conv_in → per stage: [transition ResBlock] + ResBlocks + (resample ×2, joint conv) → conv_out.

    The encoder runs over `channels` and pools time (`resample="down"`); the decoder runs over
    them reversed and upsamples (`"up"`). Stage `s`'s joint conv is named `stage{s}_{resample}`.
    """

    widths: Sequence[int]
    num_res_blocks: int
    out_features: int
    num_groups: int
    joint_kernel: int
    dilation_reference: int
    conv_impl: str
    resample: str

    @nn.compact
    def __call__(self, x):
        x = WindowConv(self.widths[0], (3, 3), impl=self.conv_impl, name="conv_in")(x)
        for s, width in enumerate(self.widths):
            if x.shape[-1] != width:
                x = ResBlock(width, self.num_groups, self.dilation_reference, self.conv_impl,
                             name=f"stage{s}_transition")(x)
            for i in range(self.num_res_blocks):
                x = ResBlock(width, self.num_groups, self.dilation_reference, self.conv_impl,
                             name=f"stage{s}_block{i}")(x)
            x = _RESAMPLE[self.resample](x)
            x = JointConv(width, self.joint_kernel, self.conv_impl,
                          name=f"stage{s}_{self.resample}")(x)
        return WindowConv(self.out_features, (3, 3), impl=self.conv_impl, name="conv_out")(x)


class FourDMoT(nn.Module):
    """The motion VQ-VAE: `encode` (windowed), `decode` (windowed), and the codebook state."""

    channels: Sequence[int] = (128, 512)
    num_res_blocks: int = 3
    code_dim: int = 3072
    codebook_size: int = 8192
    window_frames: int = 8
    num_groups: int = 32
    joint_kernel: int = 3
    dilation_reference: int = 512
    coord_dim: int = 3
    conv_impl: str = "matmul"      # "lax": XLA convolutions (same parameters and result)

    @property
    def latent_window(self) -> int:
        return self.window_frames // 2 ** len(self.channels)

    def setup(self):
        common = dict(num_res_blocks=self.num_res_blocks, num_groups=self.num_groups,
                      joint_kernel=self.joint_kernel, dilation_reference=self.dilation_reference,
                      conv_impl=self.conv_impl)
        self.encoder = ConvStack(tuple(self.channels), out_features=self.code_dim,
                                 resample="down", **common)
        self.decoder = ConvStack(tuple(reversed(self.channels)), out_features=self.coord_dim,
                                 resample="up", **common)
        self.codebook = vq.Codebook(self.codebook_size, self.code_dim)

    def encode(self, motion: jnp.ndarray) -> jnp.ndarray:
        """Normalised motion `[B, T, J, 3]` → continuous tokens `[B, latent_frames, J, code_dim]`."""
        first, rest = split_windows(motion, self.window_frames)
        return merge_windows(self.encoder(first), None if rest is None else self.encoder(rest),
                             motion.shape[0])

    def decode(self, tokens: jnp.ndarray) -> jnp.ndarray:
        """Tokens `[B, L, J, code_dim]` → normalised motion `[B, decoded_frames(L), J, 3]`."""
        first, rest = split_windows(tokens, self.latent_window)
        return merge_windows(self.decoder(first), None if rest is None else self.decoder(rest),
                             tokens.shape[0])

    def quantizer_state(self) -> dict:
        return self.codebook()

    def __call__(self, motion: jnp.ndarray):
        """Encode, quantise with the current codebook, decode: (reconstruction, indices)."""
        z = self.encode(motion)
        q, indices, _ = vq.quantize(self.quantizer_state()["codebook"], z)
        return self.decode(q), indices
