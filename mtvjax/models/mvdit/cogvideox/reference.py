"""MV-DiT-7B reference conditioning: the reference image's VAE latents, as the released pipeline
builds them (docs/reference/mvdit7b.md §6): the reference image (at the generation size, in
[−1, 1]) is repeated over the window's frames and VAE-encoded as a video; the latents are a
posterior *sample* and are *not* multiplied by the VAE's scaling factor. Used by
`mtvjax animate` and by the training-data build (one definition of the model's reference input).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def reference_latents(vae, vae_params, reference, frames: int, key,
                      tiling=None) -> jax.Array:
    """`reference` `[H, W, 3]` in [−1, 1], repeated `frames` times and encoded by the
    `CogVideoXVAE` `vae` (`tiling` as its `encode`) → `[1, F, h, w, C]` float32, the unscaled
    posterior sample drawn with `key`."""
    reference = jnp.asarray(reference, jnp.float32)
    video = jnp.broadcast_to(reference, (1, frames) + reference.shape)
    return vae.encode(vae_params, video, key=key, tiling=tiling, scale=False)
