"""MV-DiT-17B image conditioning (Wan-2.1-I2V convention, docs/reference/mvdit17b.md §6.4–§6.6):
y = a 4-channel mask (1 on the known latent frames) joined with the normalised VAE posterior mean
of a video whose first frames are known and whose other frames are 0, and the CLIP features of
an image. Used by `mtvjax animate` (the reference, or a long video's previous frames) and by the
training-data build (one definition of the model's image inputs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.models.encoders import clip_vision
from mtvjax.models.encoders.image_preprocess import clip_preprocess
from mtvjax.models.vae.wan import model as vae_wan

MASK_CHANNELS = 4


def image_condition(vae_params, vae_config, known, frames: int) -> tuple[jax.Array, int]:
    """y `[1, F, h, w, 4 + z]` (mask channels first) for a `frames`-frame video whose first
    `len(known)` frames are `known` `[n, H, W, 3]` in [−1, 1] and whose other frames are 0, and
    the number of known latent frames (where the mask is 1). `vae_config`: a Wan VAE config or
    preset name."""
    cfg = vae_wan.wan_vae_config(vae_config)
    known = np.asarray(known, np.float32)
    video = np.zeros((1, frames) + known.shape[1:], np.float32)
    video[0, :len(known)] = known
    latents = vae_wan.encode(vae_params, video, cfg)
    count = 1 + (len(known) - 1) // cfg.temporal_factor
    mask = jnp.zeros(latents.shape[:-1] + (MASK_CHANNELS,), latents.dtype)
    mask = mask.at[:, :count].set(1.0)
    return jnp.concatenate([mask, latents], axis=-1), count


def clip_features(clip_params, clip_config, image) -> jax.Array:
    """`[1, N, image_dim]` CLIP features of one image `[H, W, 3]` in [−1, 1], preprocessed as the
    Wan pipeline does (`clip_preprocess`)."""
    cfg = clip_vision.clip_vision_config(clip_config)
    pixels = clip_preprocess(np.asarray(image)[None], cfg.image_size)
    return clip_vision.encode_images(clip_params, pixels, cfg)
