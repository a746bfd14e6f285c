"""Classifier-free guidance for the MV-DiT pipelines.

* 7B (docs/reference/mvdit7b.md §6 "CFG"): motion-only guidance. Batch slot 0 is unconditional (the
  model's learnable ``unconditional_motion_token`` replaces the motion tokens), slot 1 conditional;
  the prediction is cast to float32, then ``uncond + 3.0·(cond − uncond)``. ``use_dynamic_cfg`` is
  False in infer_7b; the CogVideoX dynamic schedule is offered as an option.
* 17B (docs/reference/mvdit17b.md §2.5, §6.7): text-only guidance with the negative prompt in slot 0 and
  the prompt in slot 1 (same motion tokens in both), scale 6.0, arithmetic in the model's output
  dtype (bf16, no float32 cast); used only without the LoRA. The default LoRA run has no CFG.
  The released 17B has no motion CFG; a text + motion composition is offered as an option.

A `Guidance` describes the model *branches* (per-branch condition flags, least to most conditioned)
and one scale per consecutive pair: out = b₀ + Σ_k s_k·(b_k − b_{k−1}). With two branches this is
the usual ``uncond + s·(cond − uncond)``, in that operation order. The flags are what the model
closure receives per example (``cond_flags``): a bool per example when each branch flag is a bool,
a [B, K] bool array when the branch flags are K-tuples (e.g. (text, motion)).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

__all__ = ["cfg", "combine", "dynamic_cfg_scale", "Guidance", "motion_cfg_7b", "text_cfg_17b",
           "text_motion_cfg_17b"]


def cfg(cond, uncond, scale):
    """uncond + scale·(cond − uncond); exactly ``cond`` when scale == 1 (static or traced)."""
    if isinstance(scale, (int, float)) and scale == 1:
        return cond
    out = uncond + scale * (cond - uncond)
    if isinstance(scale, (int, float)):
        return out
    return jnp.where(jnp.asarray(scale) == 1, cond, out)


def combine(preds: Sequence[Any], scales: Sequence[Any]):
    """b₀ + Σ_k s_k·(b_k − b_{k−1}) over branch predictions ordered least → most conditioned.

    Two branches: exactly `cfg(preds[1], preds[0], scales[0])`.
    """
    if len(preds) != len(scales) + 1:
        raise ValueError(f"{len(preds)} branches need {len(preds) - 1} scales, got {len(scales)}")
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        return cfg(preds[1], preds[0], scales[0])
    out = preds[0]
    for k, s in enumerate(scales, start=1):
        out = out + s * (preds[k] - preds[k - 1])
    return out


def dynamic_cfg_scale(guidance_scale: float, timestep: float, num_inference_steps: int) -> float:
    """CogVideoX pipelines' ``use_dynamic_cfg`` schedule, verbatim (host-side, float64):

    1 + s·(1 − cos(π·((N − t)/N)^5)) / 2, with t the *timestep value* (0…999), not the step index,
    as in the diffusers pipeline code.
    """
    N = num_inference_steps
    return 1 + guidance_scale * ((1 - math.cos(math.pi * ((N - float(timestep)) / N) ** 5.0)) / 2)


@dataclasses.dataclass(frozen=True)
class Guidance:
    """A CFG recipe. ``branches[k]`` is the condition flag (bool, or tuple of bools) of model branch
    k; ``scales`` has one entry per consecutive pair; ``dynamic`` applies `dynamic_cfg_scale` to
    each scale per step; ``dtype`` is the dtype the combination runs in (None: model output dtype).

    Guidance is *active* (extra branches are evaluated) only when some scale is > 1, as in the
    released pipelines (``do_classifier_free_guidance = guidance_scale > 1``); otherwise the loop
    makes a single conditional call with the last branch's flags.
    """

    scales: tuple = (3.0,)
    branches: tuple = (False, True)
    dynamic: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.branches) != len(self.scales) + 1:
            raise ValueError("need exactly one scale per consecutive pair of branches")
        widths = {np.size(b) for b in self.branches}
        if len(widths) != 1:
            raise ValueError(f"branch flags of different widths: {self.branches}")

    @property
    def active(self) -> bool:
        return any(float(s) > 1.0 for s in self.scales)

    @property
    def flag_width(self) -> int | None:
        """None for scalar flags (cond_flags [B]); K for K-tuples (cond_flags [B, K])."""
        b = self.branches[0]
        return None if np.ndim(b) == 0 else int(np.size(b))

    def branch_flags(self, k: int, batch: int):
        """The cond_flags array of branch k for a batch of `batch` examples."""
        f = np.asarray(self.branches[k], bool)
        return jnp.asarray(np.broadcast_to(f, (batch,) + f.shape).copy())

    def scales_at(self, timesteps: np.ndarray, num_inference_steps: int) -> np.ndarray:
        """[N, n_scales] float64 table of the scales used at each step."""
        rows = []
        for t in np.asarray(timesteps):
            rows.append([dynamic_cfg_scale(float(s), float(t), num_inference_steps)
                         if self.dynamic else float(s) for s in self.scales])
        return np.asarray(rows, np.float64)


def motion_cfg_7b(scale: float = 3.0, dynamic: bool = False) -> Guidance:
    """The 7B pipeline: flag False = unconditional motion token, True = 4DMoT tokens; float32."""
    return Guidance(scales=(scale,), branches=(False, True), dynamic=dynamic, dtype=jnp.float32)


def text_cfg_17b(scale: float = 6.0) -> Guidance:
    """The 17B no-LoRA pipeline: flag False = negative prompt, True = prompt; output-dtype maths."""
    return Guidance(scales=(scale,), branches=(False, True), dynamic=False, dtype=None)


def text_motion_cfg_17b(text_scale: float = 6.0, motion_scale: float = 3.0) -> Guidance:
    """Optional (not in the release): flags (text, motion); branches (neg, none) → (prompt, none) →
    (prompt, motion): out = b₀ + s_text·(b₁ − b₀) + s_motion·(b₂ − b₁). The closure decides what
    "no motion" means for the 17B (it has no unconditional motion token)."""
    return Guidance(scales=(text_scale, motion_scale),
                    branches=((False, False), (True, False), (True, True)), dtype=None)
