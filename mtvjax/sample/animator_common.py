"""What the two MV-DiT animators share: dtypes, the family's sampling recipe, compiled sampling
runs, progress and timing.

An animator (`animator_cogvideox.CogVideoXAnimator`, `animator_wan.WanAnimator`) turns one
window of motion tokens plus the reference conditioning into denoised latents and decodes them.
`recipe_sampling` builds the sampler and CFG that the family's `SAMPLER` recipe names from the
config's `sampling` section. `inference_mesh` reads the config's `mesh` and `sharding_rules`,
with which the animators restore the MV-DiT's parameters sharded (FSDP / tensor); `SamplingRuns`
places the other inputs on that mesh (replicated) and traces the loop under
`activation_sharding`, so the compiled loop runs with the parameters' shardings and splits the
video tokens over a `context` axis (`mtvjax.parallel.context_attention`); it keeps one
ahead-of-time compiled sampling loop per input signature (the first window, and later windows
with their pinned overlap latents), reports compile and sampling seconds separately, and drives
a progress bar from the loop's step callback. `attention_kernel` reads the config's
`model.attention` choice.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from tqdm.auto import tqdm

from mtvjax.diffusion import samplers
from mtvjax.models.layers.attention import AttentionKernel, available_attention_implementations
from mtvjax.models.layers.dtypes import DTYPES
from mtvjax.models.mvdit import registry
from mtvjax.parallel.mesh import make_mesh
from mtvjax.parallel.sharding import activation_sharding, replicated
from mtvjax.sample import guidance as G
from mtvjax.sample.long_video import blend_weights, pin_first_latents
from mtvjax.sample.loop import make_sample_fn

ANIMATOR_DTYPES = ("bfloat16", "float32")   # the animators' compute dtypes (no float16)


def compute_dtype(name: str):
    if name not in ANIMATOR_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(ANIMATOR_DTYPES)}")
    return DTYPES[name]


def attention_kernel(config) -> AttentionKernel:
    """The MV-DiT attention kernel of an animate config's `model` section."""
    m = config.model
    if m.attention not in available_attention_implementations():
        raise ValueError(f"model.attention={m.attention!r}: use one of "
                         f"{list(available_attention_implementations())}")
    return AttentionKernel(m.attention, int(m.attention_chunk), int(m.attention_kv_chunk))


def inference_mesh(config) -> tuple[Mesh, tuple]:
    """(mesh of `config.mesh`, `config.sharding_rules`): where an animator's MV-DiT lives; its
    parameters are restored straight into these shardings (FSDP / tensor)."""
    return make_mesh(dict(config.mesh)), tuple(tuple(r) for r in config.sharding_rules)


def on_mesh(tree, mesh: Mesh):
    """`tree`'s arrays on `mesh`: those already placed on it as they are (the sharded
    parameters), the others (conditioning, keys) replicated."""
    whole = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and getattr(x.sharding, "mesh", None) == mesh:
            return x
        return jax.device_put(x, whole)
    return jax.tree.map(put, tree)


def _motion_guidance(sampling) -> G.Guidance:
    return G.motion_cfg_7b(float(sampling.motion_cfg))


def _text_guidance(sampling) -> G.Guidance:
    motion = float(sampling.motion_cfg)
    if motion == 1.0:
        return G.text_cfg_17b(sampling.text_cfg)
    return G.text_motion_cfg_17b(sampling.text_cfg, motion)


GUIDANCE = {"motion": _motion_guidance, "text": _text_guidance}   # SamplerRecipe.guidance styles


def recipe_sampling(family: str, sampling):
    """(sampler, guidance) of `family`'s sampling recipe for a `sampling` config section
    (sampler, steps, motion_cfg, text_cfg)."""
    recipe = registry.family(family).SAMPLER
    sampler = getattr(samplers, recipe.factory(sampling.sampler))(int(sampling.steps))
    return sampler, GUIDANCE[recipe.guidance](sampling)


def motion_args(motion_joints=None, motion_mm=None) -> tuple:
    """The optional trailing model arguments of an animator's sampling run: the first-frame
    joints (dynamic motion PE) and the window's raw motion in mm (ISA model)."""
    args = ()
    if motion_joints is not None or motion_mm is not None:
        args += (motion_joints,)
    if motion_mm is not None:
        args += (jnp.asarray(motion_mm, jnp.float32),)
    return args


class SamplingRuns:
    """Compiled `make_sample_fn` loops keyed by (latent shape, pinned latent frames)."""

    def __init__(self, denoise_fn, sampler, guidance, latent_dtype, blend: str = "hard",
                 progress: bool = True, mesh: Mesh | None = None, rules=None):
        self.denoise_fn, self.sampler, self.guidance = denoise_fn, sampler, guidance
        self.latent_dtype, self.blend, self.progress = latent_dtype, blend, progress
        self.mesh = mesh             # the sharded parameters' mesh; inputs are placed on it
        self.rules = rules           # its sharding rules: activations traced under them
        self._compiled = {}
        self._bar = None
        self.compile_seconds = 0.0
        self.sample_seconds = 0.0
        self.steps_run = 0

    def _tick(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def compile(self, shape, pinned: int, args, post_args=(), compiler_options=None):
        """The loop compiled for latents of `shape` with `pinned` pinned latent frames and these
        (concrete or abstract, placed) arguments `(key, *model_args)`; kept per signature.
        `compiler_options`: XLA debug options of this compile (the memory plan's)."""
        key = (tuple(shape), pinned)
        if key not in self._compiled:
            post = (pin_first_latents(self.sampler, blend_weights(pinned, self.blend))
                    if pinned else None)
            run = make_sample_fn(self.denoise_fn, self.sampler, shape, self.latent_dtype,
                                 guidance=self.guidance, post_step_fn=post,
                                 step_callback=self._tick if self.progress else None)
            start = time.perf_counter()
            if self.mesh is None:
                lowered = run.lower(*args, post_args=post_args)
            else:
                with activation_sharding(self.mesh, self.rules):
                    lowered = run.lower(*args, post_args=post_args)
            self._compiled[key] = lowered.compile(compiler_options)
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def __call__(self, shape, key, model_args, pinned_latents=None, label: str = "sampling"):
        """Denoised latents of `shape`; `pinned_latents` `[B, n, ...]` hold the first n latent
        frames to the given clean latents (long-video windows after the first)."""
        post_args = () if pinned_latents is None else (pinned_latents,)
        pinned = 0 if pinned_latents is None else int(pinned_latents.shape[1])
        args = (key,) + tuple(model_args)
        if self.mesh is not None:   # compiled for the parameters' shardings, inputs replicated
            args, post_args = on_mesh((args, post_args), self.mesh)
        compiled = self.compile(shape, pinned, args, post_args)
        self._bar = (tqdm(total=self.sampler.num_steps, desc=label, unit="step", leave=False)
                     if self.progress else None)
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args, post_args=post_args))
        if self.mesh is not None:   # the VAE decodes on the default device
            out = jax.device_put(out, jax.local_devices()[0])
        self.sample_seconds += time.perf_counter() - start
        self.steps_run += self.sampler.num_steps
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        return out

    @property
    def seconds_per_step(self) -> float:
        return self.sample_seconds / max(self.steps_run, 1)
