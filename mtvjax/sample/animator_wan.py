"""MV-DiT-17B (Wan-2.1-I2V family) animation: text, CLIP and first-frame conditioning, sampling.

As the released pipeline (docs/reference/mvdit17b.md §6): the prompt and the negative prompt are
umT5-encoded (or read precomputed), the reference image (at its bucket size, in [−1, 1]) gives
the CLIP features and the first frame of the conditioning video whose other frames are 0; that
video is VAE-encoded (normalised posterior mean) and joined with a 4-channel mask that is 1 on
the known latent frames, giving y (`models.mvdit.wan.reference`). Sampling follows the family's
`SAMPLER` recipe: flow-matching Euler ("euler", released) or UniPC ("unipc") with text CFG
(negative prompt in the unconditional slot), plus motion CFG when the model has unconditional
motion tokens (not in the release).

A long-video window after the first is conditioned as the release's second clip (§6.8): its
conditioning video holds the previous window's last frames (mask 1 on their latent frames), its
CLIP image is the last of them, and those latent frames are pinned after every step.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.data.skeleton import NUM_JOINTS
from mtvjax.models.mvdit.wan import convert as convert_mvdit17b
from mtvjax.models.vae.wan import convert as convert_vae_wan
from mtvjax.models.encoders.load import load_clip_vision
from mtvjax.models.mvdit.wan import model as mvdit_wan
from mtvjax.models.mvdit.wan.reference import (MASK_CHANNELS, clip_features,
                                               image_condition)
from mtvjax.models.vae.wan import model as vae_wan
from mtvjax.parallel.context_attention import check_heads
from mtvjax.sample.animator_common import (SamplingRuns, attention_kernel,
                                           compute_dtype, inference_mesh, motion_args,
                                           recipe_sampling)
from mtvjax.sample.mvdit_generate import denoise_17b


TEXT_ROWS = 512      # umT5 rows of a prompt (the tokenizer's padded length)
CLIP_TOKENS = 257    # CLIP ViT-H/14 image tokens (16 × 16 patches + class)


def text_embeddings(config) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, negative prompt) embeddings `[1, L, dim]` zero-padded to one length, from
    `config.prompt_embeddings` (.npz with `prompt` and `negative`) or the umT5 checkpoint."""
    if config.prompt_embeddings:
        path = config.prompt_embeddings
        try:
            with np.load(path) as data:
                pos, neg = np.asarray(data["prompt"]), np.asarray(data["negative"])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: need an .npz with arrays 'prompt' and 'negative' "
                             f"[tokens, text_dim] ({e})") from e
    else:
        c = config.checkpoints
        if not (c.text_encoder and c.text_tokenizer):
            raise ValueError("the 17B needs checkpoints.text_encoder (mtvjax convert umt5) and "
                             "checkpoints.text_tokenizer (the umT5 tokenizer folder), or "
                             "prompt_embeddings (.npz)")
        from mtvjax.models.encoders.load import text_encoder_from_checkpoint
        encoder = text_encoder_from_checkpoint(c.text_encoder, c.text_tokenizer,
                                               dtype=config.text_dtype, batch_size=2)
        pos, neg = encoder([config.prompt, config.negative_prompt])
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise ValueError(f"text embeddings must be [tokens, dim] of one width, got {pos.shape} "
                         f"and {neg.shape}")
    length = max(len(pos), len(neg))
    pad = lambda e: np.pad(e, ((0, length - len(e)), (0, 0)))[None].astype(np.float32)
    return pad(pos), pad(neg)


class WanAnimator:
    """Loads the converted MV-DiT-17B, Wan VAE, CLIP and text conditioning of an animate config."""

    family = "wan"

    def __init__(self, config, progress: bool = True):
        c = config.checkpoints
        dtype = compute_dtype(config.dtype)
        kernel = attention_kernel(config)
        sampler, guidance = recipe_sampling(self.family, config.sampling)
        mesh, rules = inference_mesh(config)
        model_config, self.params = convert_mvdit17b.load_converted(c.mvdit, dtype=dtype,
                                                                    mesh=mesh, rules=rules)
        check_heads(model_config.num_heads, dict(mesh.shape), rules)
        self.model = mvdit_wan.MVDiTWan(dataclasses.replace(
            model_config, dtype=config.dtype, attention=kernel.name, attention_chunk=kernel.chunk,
            attention_kv_chunk=kernel.kv_chunk))
        self.vae_config, self.vae_params = convert_vae_wan.load_converted(c.vae)
        self.clip_config, self.clip_params = load_clip_vision(c.clip)
        self.text, self.negative = text_embeddings(config)
        motion_cfg = float(config.sampling.motion_cfg)
        self.isa = model_config.conditioning == "isa"         # raw motion, no tokens
        use_motion = motion_cfg != 1.0                        # text + motion guidance
        if use_motion and not (model_config.uncond_motion or self.isa):
            raise ValueError(f"motion CFG {motion_cfg} needs a 17B with unconditional motion "
                             "tokens (model.uncond_motion); the released 17B has none: use 1.0")
        self.latent_channels = model_config.out_channels
        self.spatial = self.vae_config.spatial_factor
        self.motion_width = model_config.motion_dim
        self.dynamic_pe = model_config.motion_pe == "dynamic" and not self.isa
        self.runs = SamplingRuns(self.denoise_fn(self.model, config.sampling), sampler, guidance,
                                 dtype, config.long.blend, progress, mesh, rules)

    @staticmethod
    def denoise_fn(model, sampling):
        """The sampling loop's model call: text CFG, plus motion CFG when `motion_cfg` != 1."""
        return denoise_17b(model, float(sampling.motion_cfg) != 1.0)

    @staticmethod
    def abstract_window(model, latent_shape) -> tuple:
        """(latents shape, ShapeDtypeStructs of the loop's arguments after the parameters) of
        one window of `latent_shape` (1, F, h, w): y, prompt and negative umT5 rows, CLIP
        tokens, motion tokens."""
        c, f32 = model.config, jnp.float32
        text = jax.ShapeDtypeStruct((1, TEXT_ROWS, c.text_dim), f32)
        y = jax.ShapeDtypeStruct(tuple(latent_shape) + (c.in_channels - c.out_channels,), f32)
        return tuple(latent_shape) + (c.out_channels,), (
            y, text, text, jax.ShapeDtypeStruct((1, CLIP_TOKENS, c.image_dim), f32),
            jax.ShapeDtypeStruct((1, latent_shape[1] * NUM_JOINTS, c.motion_dim), f32))

    def prepare(self, reference: np.ndarray, frames: int, key) -> dict:
        """Per-video conditioning from the reference `[H, W, 3]` in [−1, 1]."""
        y, _ = image_condition(self.vae_params, self.vae_config, reference[None], frames)
        return {"y": y, "image": clip_features(self.clip_params, self.clip_config, reference),
                "frames": frames}

    def sample(self, cond: dict, tokens: jax.Array, key, previous_frames=None,
               label: str = "sampling", motion_joints=None, motion_mm=None) -> jax.Array:
        """Latents of one window for motion tokens `[1, M, motion_dim]` (ISA model: None, and
        the window's motion `motion_mm` `[1, T, 24, 3]` mm)."""
        y, image, pinned = cond["y"], cond["image"], None
        if previous_frames is not None:
            y, count = image_condition(self.vae_params, self.vae_config, previous_frames,
                                       cond["frames"])
            image = clip_features(self.clip_params, self.clip_config, previous_frames[-1])
            pinned = y[:, :count, ..., MASK_CHANNELS:]
        shape = y.shape[:-1] + (self.latent_channels,)
        args = (self.params, y, self.text, self.negative, image, tokens)
        return self.runs(shape, key, args + motion_args(motion_joints, motion_mm), pinned, label)

    def decode(self, latents) -> np.ndarray:
        """`[1, F, h, w, z]` → `[frames, H, W, 3]` float32 in [−1, 1]."""
        video = vae_wan.decode(self.vae_params, latents.astype(jnp.float32), self.vae_config)
        return np.asarray(jax.device_get(video[0]), np.float32)
