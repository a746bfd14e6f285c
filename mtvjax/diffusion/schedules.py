"""Noise-schedule tables for the two MV-DiT families, as plain numpy on the host.

Everything here is computed once, outside any `jit`, in the precision the released (diffusers
0.33.1) schedulers use, so the tables are bit-for-bit what those schedulers hold:

* CogVideoX (MV-DiT-7B, v-prediction), docs/reference/mvdit7b.md §6 "Scheduler" / "Scheduler maths":
  scaled-linear betas 0.00085 → 0.012 over 1000 steps in float64, ᾱ ← ᾱ / (s + (1 − s)·ᾱ) with
  s = snr_shift_scale (1.0 in the released config, so the shift is the identity), the
  zero-terminal-SNR rescale, and "trailing" timestep spacing (50 steps: 999, 979, …, 19).
* Wan flow matching (MV-DiT-17B), docs/reference/mvdit17b.md §6.6 "Scheduler": the 1000 training
  sigmas shifted once at construction (float32), then `linspace(σ_max, σ_min, N)` shifted *again*
  (float64 → float32), a terminal 0 appended, model timesteps t = σ·1000 in float32.
  shift = 5.0, static (no resolution-dependent μ).
* The flow-sigma schedule of diffusers' `UniPCMultistepScheduler(use_flow_sigmas=True)` (the
  diffusers Wan pipelines' sampler), offered as an option; not used by the released 17B run.

Model-facing timesteps are returned as numpy arrays; `samplers.py` turns the tables into step
coefficients and `loop.py` bakes them into the jitted loop as constants.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "CogVideoXScheduleConfig", "COGVIDEOX_5B", "FlowMatchConfig", "WAN_17B_FLOW",
    "scaled_linear_betas", "snr_shift", "rescale_zero_terminal_snr", "cogvideox_alphas_cumprod",
    "spaced_timesteps", "shift_sigmas", "flow_train_sigmas", "flow_match_sigmas",
    "unipc_flow_sigmas",
]


# ------------------------------------------------------------------------------------------------
# CogVideoX (v-prediction, discrete 1000-step DDPM schedule)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CogVideoXScheduleConfig:
    """Scheduler settings of `THUDM/CogVideoX-5b/scheduler` (docs/reference/mvdit7b.md §6).

    The defaults are the released (public-config) values, not the diffusers class defaults
    (epsilon, leading spacing, snr_shift_scale 3.0, no rescale), which that file overrides.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "v_prediction"
    snr_shift_scale: float = 1.0
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"
    set_alpha_to_one: bool = True
    steps_offset: int = 0


COGVIDEOX_5B = CogVideoXScheduleConfig()


def scaled_linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int,
                        schedule: str = "scaled_linear") -> np.ndarray:
    """Betas in float64 ("scaled_linear": linspace of √β, squared), as the CogVideoX schedulers."""
    if schedule == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                           dtype=np.float64) ** 2
    if schedule == "linear":  # diffusers builds this one in float32
        return np.linspace(beta_start, beta_end, num_train_timesteps,
                           dtype=np.float32).astype(np.float64)
    raise ValueError(f"unsupported beta_schedule {schedule!r}")


def snr_shift(alphas_cumprod: np.ndarray, snr_shift_scale: float) -> np.ndarray:
    """ᾱ ← ᾱ / (s + (1 − s)·ᾱ): divides the SNR ᾱ/(1 − ᾱ) by s (identity at s = 1)."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    return a / (snr_shift_scale + (1 - snr_shift_scale) * a)


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Algorithm 1, on ᾱ: shift √ᾱ so its last entry is 0, rescale so its first
    entry is unchanged. The terminal ᾱ is exactly 0 (infinite noise at t = T − 1)."""
    s = np.sqrt(np.asarray(alphas_cumprod, dtype=np.float64))
    s0, sT = s[0], s[-1]
    s = s - sT
    s = s * (s0 / (s0 - sT))
    return s ** 2


def cogvideox_alphas_cumprod(cfg: CogVideoXScheduleConfig = COGVIDEOX_5B) -> np.ndarray:
    """ᾱ_t for t = 0 … T−1, float64: cumprod(1 − β), then the SNR shift, then the optional
    zero-terminal-SNR rescale (the order of `CogVideoXDDIMScheduler` / `CogVideoXDPMScheduler`)."""
    betas = scaled_linear_betas(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps,
                                cfg.beta_schedule)
    a = np.cumprod(1.0 - betas)
    a = snr_shift(a, cfg.snr_shift_scale)
    if cfg.rescale_betas_zero_snr:
        a = rescale_zero_terminal_snr(a)
    return a


def spaced_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000,
                     spacing: str = "trailing", steps_offset: int = 0) -> np.ndarray:
    """Integer timesteps, descending ("linspace" | "leading" | "trailing"), as diffusers' DDIM.

    trailing, 50 of 1000: 999, 979, …, 39, 19.
    """
    n, T = num_inference_steps, num_train_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}], got {n}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ratio = T // n
        ts = (np.arange(0, n) * ratio).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = T / n
        ts = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    else:
        raise ValueError(f"unsupported timestep_spacing {spacing!r}")
    return np.ascontiguousarray(ts)


# ------------------------------------------------------------------------------------------------
# Flow matching (Wan 2.1)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlowMatchConfig:
    """`FlowMatchEulerDiscreteScheduler` settings of infer_17b (docs/reference/mvdit17b.md §6.6)."""

    num_train_timesteps: int = 1000
    shift: float = 5.0


WAN_17B_FLOW = FlowMatchConfig()


def shift_sigmas(sigmas, shift: float):
    """σ′ = shift·σ / (1 + (shift − 1)·σ), in the dtype of `sigmas` (float32 in, float32 out)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_train_sigmas(num_train_timesteps: int = 1000, shift: float = 5.0) -> np.ndarray:
    """The scheduler's 1000 training sigmas after its construction-time shift (float32,
    descending, σ_max = 1, σ_min = shift(1/T) = 0.00498 at shift 5)."""
    T = num_train_timesteps
    ts = np.linspace(1, T, T, dtype=np.float32)[::-1].copy()
    sig = ts / np.float32(T)
    return shift_sigmas(sig, np.float32(shift)).astype(np.float32)


def flow_match_sigmas(num_inference_steps: int, cfg: FlowMatchConfig = WAN_17B_FLOW
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas [N + 1] float32 ending in 0, model timesteps [N] float32 = σ·T).

    The released double shift: linspace(σ_max·T, σ_min·T, N)/T in float64, shifted again, then
    float32. N = 10 at shift 5: 1.0, 0.975743, …, 0.395095, 0.024414, (0).
    """
    T = cfg.num_train_timesteps
    train = flow_train_sigmas(T, cfg.shift)
    smax, smin = float(train[0]), float(train[-1])
    sig = np.linspace(smax * T, smin * T, num_inference_steps) / T
    sig = shift_sigmas(sig, float(cfg.shift)).astype(np.float32)
    timesteps = (sig * np.float32(T)).astype(np.float32)
    return np.concatenate([sig, np.zeros(1, np.float32)]), timesteps


def unipc_flow_sigmas(num_inference_steps: int, flow_shift: float = 5.0,
                      num_train_timesteps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas [N + 1] float32 ending in 0, model timesteps [N] int64) of diffusers'
    `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=…, final_sigmas_type="zero")`.

    linspace(1, 1/T, N + 1)[:-1], shifted once (float64), σ_0 nudged to 1 − 1e-6, timesteps
    truncated to integers.
    """
    T = num_train_timesteps
    sig = np.linspace(1, 1 / T, num_inference_steps + 1)[:-1]
    sig = shift_sigmas(sig, float(flow_shift))
    if np.fabs(sig[0] - 1) < 1e-6:
        sig[0] -= 1e-6
    timesteps = (sig * T).astype(np.int64)
    sig = np.concatenate([sig, [0.0]]).astype(np.float32)
    return sig, timesteps
