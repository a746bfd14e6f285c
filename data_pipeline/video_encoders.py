"""The family's image/video encoders a latent record needs, loaded from converted checkpoints.

`FamilyEncoders(config)` reads `config.checkpoints` (the VAE; the 17B's CLIP) and gives, for one
window, the VAE posterior of its frames (`encode_posterior`) and the reference conditioning of
its first frame by the functions `mtvjax animate` uses (`mtvjax.models.mvdit.*.reference`).
"""
from __future__ import annotations

import jax
import numpy as np

from mtvjax.models.mvdit import registry


class FamilyEncoders:
    """The family's VAE (and the 17B's CLIP) from `config.checkpoints`: `posterior(pixels)` and
    `conditioning(first_frame, frames, key)` of one window."""

    def __init__(self, config):
        ck = config.checkpoints
        self.family = registry.family(config.family).NAME
        if self.family == "cogvideox":
            from mtvjax.models.vae.cogvideox.convert import restore_vae_cogvideox
            _, self.vae, self.params = restore_vae_cogvideox(ck.vae)
            self.tiling = bool(config.latents.tiling)
        else:
            from mtvjax.models.encoders.load import load_clip_vision
            from mtvjax.models.vae.wan.convert import load_converted
            self.vae_config, self.params = load_converted(ck.vae)
            self.clip_config, self.clip_params = load_clip_vision(ck.clip)

    def posterior(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`[T, H, W, 3]` in [−1, 1] → (mean, log-variance) `[F, h, w, C]`, model latent space."""
        video = jax.numpy.asarray(pixels, jax.numpy.float32)[None]
        if self.family == "cogvideox":
            mean, logvar = self.vae.encode_posterior(self.params, video, tiling=self.tiling)
        else:
            from mtvjax.models.vae.wan.model import encode_posterior
            mean, logvar = encode_posterior(self.params, video, self.vae_config)
        return np.asarray(mean[0], np.float32), np.asarray(logvar[0], np.float32)

    def conditioning(self, first: np.ndarray, frames: int, key) -> tuple[np.ndarray, np.ndarray | None]:
        """(`ref_latents` `[F, h, w, C]`, the 17B's CLIP `image` `[N, d]` or None)."""
        if self.family == "cogvideox":
            from mtvjax.models.mvdit.cogvideox.reference import reference_latents
            ref = reference_latents(self.vae, self.params, first, frames, key, self.tiling)
            return np.asarray(ref[0], np.float32), None
        from mtvjax.models.mvdit.wan.reference import MASK_CHANNELS, clip_features, image_condition
        y, _ = image_condition(self.params, self.vae_config, first[None], frames)
        image = clip_features(self.clip_params, self.clip_config, first)
        return (np.asarray(y[0, ..., MASK_CHANNELS:], np.float32),
                np.asarray(image[0], np.float32))
