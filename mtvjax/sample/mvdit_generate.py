"""Sampling MV-DiT latents: the model closures of both families plugged into the jitted loop.

`generate_7b` runs the released 7B recipe (CogVideoX DPM-Solver++(2M) stochastic sampler,
v-prediction, motion CFG whose unconditional branch uses the learnable unconditional motion
tokens). `generate_17b` runs the released 17B recipe (flow-matching Euler with shift, text CFG
with negative-prompt embeddings; motion CFG too when the model has unconditional tokens).
Both are one `jax.jit` over the whole loop, seeded by a JAX key.

`motion_joints` (optional, `[B, 24, 3]` mm, the driving clip's first-frame joints) feeds the
`motion_pe="dynamic"` motion RoPE; it is tiled over the guidance branches like the other
per-example inputs. None (default) leaves the model call exactly as before.

`motion_mm` (optional, `[B, T, 24, 3]` mm, T = 4·(F − 1) + 1) is the raw motion of a
`model.conditioning="isa"` model, tiled over the guidance branches likewise; such a model ignores
the motion tokens (pass None), and its motion CFG's unconditional branch is the drop flag (all of
the example's points masked), so it needs no unconditional tokens.
"""
from __future__ import annotations

import jax.numpy as jnp

from mtvjax.sample import guidance as G
from mtvjax.diffusion import samplers
from mtvjax.models.mvdit import registry
from mtvjax.sample.loop import make_sample_fn


def _tile(x, batch: int):
    """Repeats per-example inputs to the (branch-major) batch of the guided model call."""
    if x is None:
        return None
    return jnp.concatenate([x] * (batch // x.shape[0]), axis=0)


def _joints_kwargs(motion_joints, b: int, motion_mm=None) -> dict:
    out = {} if motion_joints is None else {"motion_joints": _tile(motion_joints, b)}
    if motion_mm is not None:
        out["motion_mm"] = _tile(motion_mm, b)
    return out


def _extra_args(motion_joints, motion_mm) -> tuple:
    """Trailing optional model arguments of the sampling loop (None only where needed)."""
    if motion_mm is not None:
        return (motion_joints, motion_mm)
    return () if motion_joints is None else (motion_joints,)


def uses_isa(model) -> bool:
    """Whether a 7B (`MVDiTCogVideoX`) or 17B (`MVDiTWan`) model is ISA-conditioned."""
    config = getattr(model, "config", model)
    return getattr(config, "conditioning", "motion_attention") == "isa"


def denoise_7b(model):
    """`denoise_fn(latents, t, cond_flags, params, ref_latents, motion_tokens,
    motion_joints=None, motion_mm=None)` of the 7B."""
    def denoise(latents, t, cond, params, ref_latents, motion_tokens, motion_joints=None,
                motion_mm=None):
        b = latents.shape[0]
        return model.apply({"params": params}, latents, ref_latents=_tile(ref_latents, b),
                           timesteps=t, motion_tokens=_tile(motion_tokens, b), motion_drop=~cond,
                           **_joints_kwargs(motion_joints, b, motion_mm))
    return denoise


def denoise_17b(model, motion_cfg: bool):
    """`denoise_fn(latents, t, cond_flags, params, y, text, negative_text, image, motion,
    motion_joints=None, motion_mm=None)`.

    Flags are `[b]` (text) or `[b, 2]` (text, motion) when motion CFG is on.
    """
    def denoise(latents, t, cond, params, y, text, negative_text, image, motion,
                motion_joints=None, motion_mm=None):
        b = latents.shape[0]
        text_on = cond[:, 0] if motion_cfg else cond
        text_b = jnp.where(text_on[:, None, None], _tile(text, b), _tile(negative_text, b))
        kwargs = {"motion_drop": ~cond[:, 1]} if motion_cfg else {}
        kwargs.update(_joints_kwargs(motion_joints, b, motion_mm))
        return model.apply({"params": params}, latents, t, text_b, _tile(image, b),
                           _tile(motion, b), y=_tile(y, b), **kwargs)
    return denoise


def _released_sampler(family: str, num_steps: int):
    """The sampler the family's recipe releases (`SamplerRecipe.default_sampler`)."""
    recipe = registry.family(family).SAMPLER
    return getattr(samplers, recipe.factory(recipe.default_sampler))(num_steps)


def generate_7b(model, params, ref_latents, motion_tokens, key, num_steps: int = 50,
                motion_cfg: float = 3.0, motion_joints=None, motion_mm=None):
    """Denoised `[B, F, H, W, 16]` latents for reference latents `[B, F, H, W, 16]` (the image
    latent repeated over frames) and motion tokens `[B, F * 24, D]`; `motion_joints` `[B, 24, 3]`
    (mm) for a `motion_pe="dynamic"` model; `motion_mm` `[B, T, 24, 3]` for an ISA model (whose
    motion tokens may be None)."""
    _check_isa(model, motion_mm)
    sampler = _released_sampler("cogvideox", num_steps)
    run = make_sample_fn(denoise_7b(model), sampler, ref_latents.shape[:-1] + (model.out_channels,),
                         guidance=G.motion_cfg_7b(motion_cfg))
    return run(key, params, ref_latents, motion_tokens, *_extra_args(motion_joints, motion_mm))


def generate_17b(model, params, y, text, negative_text, image, motion_tokens, key,
                 num_steps: int = 50, text_cfg: float = 6.0, motion_cfg: float | None = None,
                 motion_joints=None, motion_mm=None):
    """Denoised `[B, F, H, W, 16]` latents; `y` = mask | reference `[B, F, H, W, 20]`, text and
    negative-text embeddings `[B, L, text_dim]`, CLIP image embedding, motion tokens;
    `motion_joints` `[B, 24, 3]` (mm) for a `motion_pe="dynamic"` model; `motion_mm`
    `[B, T, 24, 3]` for an ISA model (motion tokens may be None; motion CFG drops the points)."""
    _check_isa(model, motion_mm)
    use_motion_cfg = motion_cfg is not None
    if use_motion_cfg and not (model.config.uncond_motion or uses_isa(model)):
        raise ValueError("motion CFG needs a model with unconditional motion tokens "
                         "(model.uncond_motion=True); the released 17B has none")
    guidance = (G.text_motion_cfg_17b(text_cfg, motion_cfg) if use_motion_cfg
                else G.text_cfg_17b(text_cfg))
    sampler = _released_sampler("wan", num_steps)
    shape = y.shape[:-1] + (model.config.out_channels,)
    run = make_sample_fn(denoise_17b(model, use_motion_cfg), sampler, shape, guidance=guidance)
    return run(key, params, y, text, negative_text, image, motion_tokens,
               *_extra_args(motion_joints, motion_mm))


def _check_isa(model, motion_mm) -> None:
    if uses_isa(model) and motion_mm is None:
        raise ValueError('an ISA model (model.conditioning="isa") samples from motion_mm '
                         "[B, T, 24, 3] (the window's joints in mm)")
