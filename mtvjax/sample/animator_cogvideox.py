"""MV-DiT-7B (CogVideoX family) animation: reference latents, guided sampling, decoding.

As the released pipeline (docs/reference/mvdit7b.md §6): the reference image (already at the
generation size, in [−1, 1]) is repeated over the window's frames and VAE-encoded as a video;
the latents are a posterior *sample* and are *not* multiplied by the scaling factor
(`models.mvdit.cogvideox.reference`), while decoding divides by it. Sampling follows the family's
`SAMPLER` recipe: the CogVideoX DPM-Solver++(2M) SDE ("dpm", released) or DDIM ("ddim") with
motion CFG whose unconditional branch uses the model's learnable unconditional motion tokens.
Later long-video windows pin their first latent frames to the scaled VAE latents of the previous
window's last frames (`long_video`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.data.skeleton import NUM_JOINTS
from mtvjax.models.mvdit.cogvideox.convert import restore_mvdit7b
from mtvjax.models.mvdit.cogvideox.reference import reference_latents
from mtvjax.models.vae.cogvideox.convert import restore_vae_cogvideox
from mtvjax.parallel.context_attention import check_heads
from mtvjax.sample.animator_common import (SamplingRuns, attention_kernel,
                                           compute_dtype, inference_mesh, motion_args,
                                           recipe_sampling)
from mtvjax.sample.mvdit_generate import denoise_7b


class CogVideoXAnimator:
    """Loads the converted MV-DiT-7B and CogVideoX VAE named in an animate config."""

    family = "cogvideox"

    def __init__(self, config, progress: bool = True):
        dtype = compute_dtype(config.dtype)
        kernel = attention_kernel(config)
        sampler, guidance = recipe_sampling(self.family, config.sampling)
        mesh, rules = inference_mesh(config)
        _, self.model, self.params = restore_mvdit7b(config.checkpoints.mvdit, params_dtype=dtype,
                                                     mesh=mesh, rules=rules, dtype=dtype,
                                                     attention_implementation=kernel)
        check_heads(self.model.num_heads, dict(mesh.shape), rules)
        _, self.vae, self.vae_params = restore_vae_cogvideox(config.checkpoints.vae,
                                                             dtype=config.vae.dtype)
        self.tiling = bool(config.vae.tiling)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.spatial = self.vae.spatial_ratio
        self.motion_width = self.model.width
        self.isa = self.model.conditioning == "isa"           # raw motion, no tokens
        self.dynamic_pe = self.model.motion_pe == "dynamic" and not self.isa
        self.runs = SamplingRuns(self.denoise_fn(self.model, config.sampling), sampler, guidance,
                                 dtype, config.long.blend, progress, mesh, rules)

    @staticmethod
    def denoise_fn(model, sampling):
        """The sampling loop's model call (motion CFG through the unconditional tokens)."""
        return denoise_7b(model)

    @staticmethod
    def abstract_window(model, latent_shape) -> tuple:
        """(latents shape, ShapeDtypeStructs of the loop's arguments after the parameters) of
        one window of `latent_shape` (1, F, h, w): reference latents and motion tokens."""
        f32 = jnp.float32
        shape = tuple(latent_shape) + (model.out_channels,)
        return shape, (jax.ShapeDtypeStruct(shape, f32),
                       jax.ShapeDtypeStruct((1, latent_shape[1] * NUM_JOINTS, model.width), f32))

    def prepare(self, reference: np.ndarray, frames: int, key) -> dict:
        """Per-video conditioning: `reference` `[H, W, 3]` in [−1, 1] repeated `frames` times."""
        return {"ref_latents": reference_latents(self.vae, self.vae_params, reference, frames,
                                                 key, self.tiling)}

    def encode_clean(self, frames: np.ndarray) -> jax.Array:
        """`[n, H, W, 3]` decoded frames in [−1, 1] → the model's (scaled) latents `[1, m, ...]`."""
        return self.vae.encode(self.vae_params, jnp.asarray(frames, jnp.float32)[None],
                               tiling=self.tiling)

    def sample(self, cond: dict, tokens: jax.Array, key, previous_frames=None,
               label: str = "sampling", motion_joints=None, motion_mm=None) -> jax.Array:
        """Latents of one window for motion tokens `[1, M, D]` (ISA model: None, and the
        window's motion `motion_mm` `[1, T, 24, 3]` mm); `previous_frames` `[k, H, W, 3]`
        (the last decoded frames of the previous window) pin the first latent frames."""
        ref = cond["ref_latents"]
        pinned = None if previous_frames is None else self.encode_clean(previous_frames)
        shape = ref.shape[:-1] + (self.model.out_channels,)
        args = (self.params, ref, tokens) + motion_args(motion_joints, motion_mm)
        return self.runs(shape, key, args, pinned, label)

    def decode(self, latents) -> np.ndarray:
        """`[1, F, h, w, C]` → `[frames, H, W, 3]` float32 in [−1, 1]."""
        video = self.vae.decode(self.vae_params, latents.astype(jnp.float32), tiling=self.tiling)
        return np.clip(np.asarray(jax.device_get(video[0]), np.float32), -1.0, 1.0)
