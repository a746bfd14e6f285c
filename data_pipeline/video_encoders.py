"""The family's image/video encoders a latent record needs, loaded from converted checkpoints.

`FamilyEncoders(config)` reads `config.checkpoints` (the VAE; the 17B's CLIP) and gives the VAE
posteriors of a group of windows (`encode_posterior`), data-parallel over this process's local
devices (the windows are stacked on the batch axis and sharded over a one-axis mesh of
`jax.local_devices()`, padded to a multiple of their count), and the reference conditioning of
a window's first frame by the functions `mtvjax animate` uses (`mtvjax.models.mvdit.*.reference`).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtvjax.models.mvdit import registry


class FamilyEncoders:
    """The family's VAE (and the 17B's CLIP) from `config.checkpoints`: `posterior(pixels)` and
    `conditioning(first_frame, frames, key)` of one window."""

    def __init__(self, config):
        ck = config.checkpoints
        self.family = registry.family(config.family).NAME
        self.mesh = Mesh(np.array(jax.local_devices()), ("batch",))
        if self.family == "cogvideox":
            from mtvjax.models.vae.cogvideox.convert import restore_vae_cogvideox
            _, self.vae, self.params = restore_vae_cogvideox(ck.vae)
            self.tiling = bool(config.latents.tiling)
        else:
            from mtvjax.models.encoders.load import load_clip_vision
            from mtvjax.models.vae.wan.convert import load_converted
            self.vae_config, self.params = load_converted(ck.vae)
            self.clip_config, self.clip_params = load_clip_vision(ck.clip)
        # the VAE's weights on every local device (restored committed to the first one)
        self.params = jax.device_put(self.params, NamedSharding(self.mesh, PartitionSpec()))

    @property
    def devices(self) -> int:
        """Windows encoded per call: one per local device."""
        return len(self.mesh.devices.flat)

    def posteriors(self, windows: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Windows `[T, H, W, 3]` in [−1, 1] (one shape) → (mean, log-variance) `[F, h, w, C]`
        of each, in the model's latent space; encoded as one batch over the local devices."""
        n = len(windows)
        batch = np.stack(windows).astype(np.float32)
        pad = -n % self.devices
        if pad:
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        video = jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec("batch")))
        if self.family == "cogvideox":
            mean, logvar = self.vae.encode_posterior(self.params, video, tiling=self.tiling)
        else:
            from mtvjax.models.vae.wan.model import encode_posterior
            mean, logvar = encode_posterior(self.params, video, self.vae_config)
        mean, logvar = np.asarray(mean, np.float32), np.asarray(logvar, np.float32)
        return [(mean[i], logvar[i]) for i in range(n)]

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
