"""Videos longer than one MV-DiT window: a window plan, latent pinning and stitching.

One window is what the model was trained on (49 frames = 13 latent frames in the release; the
7B's unconditional motion tokens are exactly that long). A longer request is cut into windows of
`window` frames that start `window − overlap` frames apart, `overlap` = 1 + 4k frames so the
overlap is a whole number of latent frames (1 + k) of the causal video VAEs. The motion is
tokenised per window and every window reuses the same unconditional tokens for guidance.

Window w > 0 is conditioned on the last `overlap` decoded frames of window w − 1: they are
VAE-encoded to `1 + k` clean latents, and after every sampling step the window's first latent
frames are replaced by those clean latents noised to the level the sampler has just reached
(a·x0 + b·ε, `marginal_after_step`), blended with what the model produced by `blend_weights`
(1 = hard overwrite, as the released 17B long-video mode; a ramp lets the model take over
towards the end of the overlap). At the last step the level is zero noise, so with hard pinning
the overlap latents are exactly the conditioning ones. The decoded windows are then joined with
a linear cross-fade over the `overlap` frames, and the result is cut to the requested length.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """Where each window starts in the (padded) frame sequence."""

    frames: int          # frames requested
    window: int          # frames per window
    overlap: int         # frames shared by consecutive windows (0 for a single window)
    starts: tuple        # first frame of each window

    @property
    def padded_frames(self) -> int:
        return self.starts[-1] + self.window

    @property
    def overlap_latents(self) -> int:
        return 0 if self.overlap == 0 else 1 + (self.overlap - 1) // 4


def plan_windows(frames: int, window: int, overlap: int) -> WindowPlan:
    """Windows covering `frames` frames; the last one may run past the end (its motion is
    padded by repeating the last frame and its extra frames are dropped)."""
    if frames < 1 or window < 1:
        raise ValueError(f"need frames >= 1 and window >= 1, got {frames} and {window}")
    if frames <= window:
        return WindowPlan(frames, frames, 0, (0,))
    if overlap < 1 or (overlap - 1) % 4 or overlap >= window:
        raise ValueError(f"overlap must be 1 + 4k frames and shorter than the {window}-frame "
                         f"window (a whole number of latent frames), got {overlap}")
    step = window - overlap
    count = 1 + -(-(frames - window) // step)
    return WindowPlan(frames, window, overlap, tuple(i * step for i in range(count)))


def window_motion(motion: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """`[T ≥ frames, 24, 3]` → `[windows, window, 24, 3]`, the tail padded with the last frame."""
    motion = np.asarray(motion)[:plan.frames]
    if plan.padded_frames > len(motion):
        pad = np.repeat(motion[-1:], plan.padded_frames - len(motion), axis=0)
        motion = np.concatenate([motion, pad])
    return np.stack([motion[s:s + plan.window] for s in plan.starts])


def marginal_after_step(sampler) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) float32 `[N]`: after step i a clean x0 noised to the sampler's level is a·x0 + b·ε
    (flow samplers: 1 − σ_{i+1}, σ_{i+1}; CogVideoX: √ᾱ_next, √(1 − ᾱ_next))."""
    if getattr(sampler, "sigmas", None) is not None:
        sigma = np.asarray(sampler.sigmas, np.float32)[1:]
        return 1 - sigma, sigma
    alpha = getattr(sampler, "alpha_next", None)
    if alpha is None:
        raise ValueError(f"{type(sampler).__name__} does not expose its noise levels")
    alpha = np.asarray(alpha, np.float32)
    return np.sqrt(alpha), np.sqrt(1 - alpha)


def blend_weights(count: int, mode: str) -> np.ndarray:
    """Per pinned latent frame: 1 = replace by the conditioning latents; "hard": all 1; "ramp":
    from 1 down to 1 / count, so the model shapes the last overlap frames more."""
    if mode == "hard":
        return np.ones(count, np.float32)
    if mode == "ramp":
        return (1 - np.arange(count, dtype=np.float32) / count).astype(np.float32)
    raise ValueError(f"unknown overlap blend {mode!r}; expected 'hard' or 'ramp'")


def pin_first_latents(sampler, weights: np.ndarray):
    """`post_step_fn(x, i, key, clean)` for `make_sample_fn`-style loops: the first
    `len(weights)` latent frames (axis 1) move towards `clean` `[B, n, ...]` noised to the level
    after step i."""
    a_tab, b_tab = (jnp.asarray(t) for t in marginal_after_step(sampler))
    w = jnp.asarray(weights, jnp.float32)
    n = len(weights)

    def post_step(x, i, key, clean):
        head = x[:, :n].astype(jnp.float32)
        noise = jax.random.normal(key, head.shape, jnp.float32)
        target = a_tab[i] * clean.astype(jnp.float32) + b_tab[i] * noise
        shape = (1, n) + (1,) * (x.ndim - 2)
        head = w.reshape(shape) * target + (1 - w.reshape(shape)) * head
        return x.at[:, :n].set(head.astype(x.dtype))

    return post_step


def stitch(windows: list[np.ndarray], plan: WindowPlan) -> np.ndarray:
    """Per-window arrays `[window, ...]` (decoded frames, or joints) → `[frames, ...]`,
    cross-fading each overlap linearly from the earlier window to the later one."""
    if len(windows) != len(plan.starts):
        raise ValueError(f"{len(windows)} windows for a plan of {len(plan.starts)}")
    out = np.asarray(windows[0], np.float32)
    k = plan.overlap
    fade = ((np.arange(k, dtype=np.float32) + 1) / (k + 1)).reshape((-1,) + (1,) * (out.ndim - 1))
    for video in windows[1:]:
        video = np.asarray(video, np.float32)
        mixed = (1 - fade) * out[-k:] + fade * video[:k]
        out = np.concatenate([out[:-k], mixed, video[k:]])
    return out[:plan.frames]
