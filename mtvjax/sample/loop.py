"""The whole sampling loop as one `jax.jit`: noise draw, N × (model call(s), guidance, step).

Usage::

    sampler = samplers.cogvideox_dpm(50)                   # released 7B sampler
    run = make_sample_fn(denoise_fn, sampler, shape=(1, 13, 16, 64, 64),
                         guidance=guidance.motion_cfg_7b(3.0))
    latents = run(key, params, ref_latents, motion_tokens)  # extra args go to denoise_fn

``denoise_fn(latents, t, cond_flags, *model_args) -> prediction`` is any model closure:

* ``latents`` [b, …] (b = B, or nb·B when the nb guidance branches are batched),
* ``t`` [b] — the sampler's model timesteps (int32 for CogVideoX and UniPC, float32 σ·1000 for
  flow Euler), broadcast to the batch as the released pipelines do,
* ``cond_flags`` [b] bool (or [b, K] for multi-condition guidance): True = conditional. For the 7B,
  False means "use the model's learnable unconditional motion tokens"; for the 17B text CFG, False
  means "negative-prompt embeddings". Under batched CFG the batch is branch-major: rows
  [0, B) are branch 0 (unconditional, as the released slot 0), [B, 2B) branch 1, … — the closure
  must tile its per-example inputs (reference latents, y, CLIP, motion tokens) accordingly.
* ``model_args`` — extra jit arguments (parameters, conditioning): pass large arrays here rather
  than closing over them, so they are not baked into the program as constants.

Randomness: ``key`` is split into (initial noise, per-step noise, post-step hook); step i uses
``fold_in(step_key, i)``. Same key → same result; the loop never touches host RNG.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.sample.guidance import Guidance, combine

__all__ = ["make_sample_fn", "sample", "guided_prediction"]


def guided_prediction(denoise_fn: Callable, latents, t, guidance: Guidance | None,
                      scales=None, model_args: Sequence[Any] = (), batch_cfg: bool = True):
    """One guided model evaluation at model timestep ``t`` (a scalar).

    ``scales``: the scales for this step (defaults to ``guidance.scales``). With no active
    guidance this is a single conditional call.
    """
    B = latents.shape[0]
    if guidance is None or not guidance.active:
        flags = (jnp.ones((B,), bool) if guidance is None
                 else guidance.branch_flags(len(guidance.branches) - 1, B))
        return denoise_fn(latents, jnp.full((B,), t), flags, *model_args)
    scales = guidance.scales if scales is None else scales
    nb = len(guidance.branches)
    if batch_cfg:
        x_in = jnp.concatenate([latents] * nb, axis=0)
        flags = jnp.concatenate([guidance.branch_flags(k, B) for k in range(nb)], axis=0)
        out = denoise_fn(x_in, jnp.full((nb * B,), t), flags, *model_args)
        preds = [out[k * B:(k + 1) * B] for k in range(nb)]
    else:
        preds = [denoise_fn(latents, jnp.full((B,), t), guidance.branch_flags(k, B), *model_args)
                 for k in range(nb)]
    if guidance.dtype is not None:
        preds = [p.astype(guidance.dtype) for p in preds]
    return combine(preds, [scales[k] for k in range(len(guidance.scales))])


def make_sample_fn(denoise_fn: Callable, sampler, shape: Sequence[int], dtype=jnp.float32, *,
                   guidance: Guidance | None = None, batch_cfg: bool = True,
                   init_noise_sigma: float = 1.0,
                   post_step_fn: Callable | None = None, return_trajectory: bool = False,
                   step_callback: Callable[[int], None] | None = None,
                   jit: bool = True) -> Callable:
    """Build ``run(key, *model_args, latents=None, post_args=())`` → final latents (``dtype``).

    * ``sampler``: from `mtvjax.diffusion.samplers` (cogvideox_dpm / cogvideox_ddim / flow_euler /
      flow_unipc).
    * ``shape``/``dtype``: latent shape and dtype. The initial latents are N(0, 1)·init_noise_sigma
      drawn in float32 and cast to ``dtype``, unless ``latents=`` is given. After every step the
      latents are cast back to ``dtype`` (bf16 in the released runs).
    * ``guidance``: a `Guidance` (None: no CFG, one conditional call per step).
    * ``batch_cfg``: True → one model call per step on the branch-concatenated batch (as the
      released pipelines do); False → one call per branch.
    * ``post_step_fn(latents, i, key, *post_args) -> latents``: optional hook after step i (e.g.
      the long-video pinning of the first latent frames, `long_video.pin_first_latents`);
      ``post_args`` are given to ``run`` (jit arguments, like ``model_args``).
    * ``return_trajectory``: also return the [N, *shape] latents after each step.
    * ``step_callback(i)``: a host function called (through `jax.debug.callback`) as each step
      finishes, e.g. to advance a progress bar; it sees only the step index.

    The whole loop (noise, every model call, guidance and step) is one `jax.jit` (a `lax.scan`
    over the step index); the schedule tables are compile-time constants.
    """
    shape = tuple(int(s) for s in shape)
    n = int(sampler.num_steps)
    ts_table = np.asarray(sampler.model_timesteps)
    scale_table = None
    if guidance is not None and guidance.active and guidance.dynamic:
        scale_table = guidance.scales_at(ts_table, n).astype(np.float32)

    def run(key, *model_args, latents=None, post_args=()):
        k_init, k_step, k_post = jax.random.split(key, 3)
        if latents is None:
            x = (jax.random.normal(k_init, shape, jnp.float32) * init_noise_sigma).astype(dtype)
        else:
            x = jnp.asarray(latents).astype(dtype)
        state0 = sampler.init_state(x)
        ts = jnp.asarray(ts_table)

        def body(carry, i):
            x, state = carry
            scales = None if scale_table is None else jnp.asarray(scale_table)[i]
            pred = guided_prediction(denoise_fn, x, ts[i], guidance, scales, model_args,
                                     batch_cfg)
            noise = (jax.random.normal(jax.random.fold_in(k_step, i), x.shape, jnp.float32)
                     if sampler.needs_noise else None)
            x_new, state = sampler.step(i, x, pred, state, noise)
            x_new = x_new.astype(dtype)
            if post_step_fn is not None:
                x_new = post_step_fn(x_new, i, jax.random.fold_in(k_post, i),
                                     *post_args).astype(dtype)
            if step_callback is not None:
                jax.debug.callback(lambda j, x: step_callback(int(j)), i, x_new[(0,) * x_new.ndim])
            return (x_new, state), (x_new if return_trajectory else None)

        (x, _), traj = jax.lax.scan(body, (x, state0), jnp.arange(n))
        return (x, traj) if return_trajectory else x

    return jax.jit(run) if jit else run


def sample(denoise_fn: Callable, sampler, key, shape: Sequence[int], dtype=jnp.float32, *,
           model_args: Sequence[Any] = (), latents=None, **kwargs):
    """One-shot convenience: ``make_sample_fn(...)(key, *model_args, latents=latents)``."""
    fn = make_sample_fn(denoise_fn, sampler, shape, dtype, **kwargs)
    return fn(key, *model_args, latents=latents)
