"""Sampler steps: CogVideoX DDIM and DPM-Solver++(2M) SDE (v-prediction), flow-matching Euler and
flow UniPC (bh2).

Every step of every sampler here is a linear combination of the current sample, the model output
and a little carried state, with scalar coefficients that depend only on the schedule. Those
coefficients are computed on the host (numpy) in the precision the released diffusers schedulers
use — float64 for the CogVideoX schedulers, whose ᾱ table is float64; float32 for the flow
schedulers — and indexed by the (traced) step number inside the jitted loop. Limits such as
log(0) at the zero-terminal-SNR end of the schedule are evaluated on the host once, with IEEE
infinities, exactly as diffusers evaluates them, so no inf or NaN ever reaches the device.

A sampler object has

* ``num_steps`` and ``model_timesteps`` (numpy [N]: what the model is given at step i — int32
  for CogVideoX, float32 σ·1000 for flow Euler, int32 for flow UniPC),
* ``needs_noise`` (whether ``step`` consumes fresh Gaussian noise),
* ``init_state(sample)`` → the carried pytree,
* ``step(i, sample, model_output, state, noise)`` → ``(prev_sample, state)``; ``i`` may be traced,
  ``noise`` is a standard-normal array shaped like ``sample`` (or None when ``needs_noise`` is
  False).

Products of a coefficient with the *sample* are rounded to the sample's dtype before they are
combined with float32 terms, as torch does when a bf16 latent meets a 0-dim float coefficient (the
released pipelines keep bf16 latents), so a float32 run is plain float32 arithmetic and a bf16 run
follows the released mixed-precision pattern.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from mtvjax.diffusion import schedules as S

__all__ = [
    "v_to_x0", "ddim_step", "dpm_solver_2m_sde_step", "flow_euler_step", "dpm_coefficients",
    "CogVideoXDDIMSampler", "CogVideoXDPMSampler", "FlowEulerSampler", "FlowUniPCSampler",
    "cogvideox_ddim", "cogvideox_dpm", "flow_euler", "flow_unipc",
]

_F32 = jnp.float32


def _mul_keep(c, x):
    """c·x rounded to x's dtype (torch: 0-dim coefficient × tensor keeps the tensor's dtype),
    then promoted to float32 for the rest of the step."""
    return (c * x.astype(_F32)).astype(x.dtype).astype(_F32)


def _row(table, i):
    return jnp.asarray(table)[i]


# ------------------------------------------------------------------------------------------------
# Pure step functions (scalar coefficients in, arrays out)
# ------------------------------------------------------------------------------------------------


def v_to_x0(sample, model_output, sqrt_alpha, sqrt_one_minus_alpha,
            prediction_type: str = "v_prediction"):
    """x0 from the model output: v (x0 = √ᾱ·x − √(1−ᾱ)·v), epsilon or sample."""
    out = model_output.astype(_F32)
    if prediction_type == "v_prediction":
        return _mul_keep(sqrt_alpha, sample) - sqrt_one_minus_alpha * out
    if prediction_type == "epsilon":
        return (sample.astype(_F32) - sqrt_one_minus_alpha * out) / sqrt_alpha
    if prediction_type == "sample":
        return out
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def ddim_step(sample, x0, a_t, b_t):
    """Deterministic DDIM (η = 0): x_prev = a_t·x + b_t·x0 with a_t = √((1−ᾱ_prev)/(1−ᾱ_t)),
    b_t = √ᾱ_prev − √ᾱ_t·a_t (CogVideoXDDIMScheduler.step)."""
    return _mul_keep(a_t, sample) + b_t * x0


def dpm_solver_2m_sde_step(sample, x0, old_x0, noise, mult1, mult2, mult3, mult4, mult_noise):
    """CogVideoXDPMScheduler.step: x_prev = m1·x − m2·D + m_noise·ε with D = m3·x0 − m4·x0_old.

    A first-order step is the same formula with (m3, m4) = (1, 0) (then D is x0 exactly).
    """
    d = mult3 * x0 - mult4 * old_x0
    return _mul_keep(mult1, sample) - mult2 * d + mult_noise * noise.astype(_F32)


def flow_euler_step(sample, model_output, dt):
    """FlowMatchEulerDiscreteScheduler.step: float32(x) + dt·out, dt = σ_{i+1} − σ_i (float32);
    the product keeps the model output's dtype, as in torch."""
    return sample.astype(_F32) + _mul_keep(dt, model_output)


# ------------------------------------------------------------------------------------------------
# CogVideoX samplers
# ------------------------------------------------------------------------------------------------


def _cog_tables(num_inference_steps: int, cfg: S.CogVideoXScheduleConfig):
    """Per-step (t, ᾱ_t, ᾱ_prev, ᾱ_back or nan, prev_t) with diffusers' prev_t = t − T // N."""
    ac = S.cogvideox_alphas_cumprod(cfg)
    T = cfg.num_train_timesteps
    ts = S.spaced_timesteps(num_inference_steps, T, cfg.timestep_spacing, cfg.steps_offset)
    final = 1.0 if cfg.set_alpha_to_one else float(ac[0])
    prev_ts = ts - T // num_inference_steps
    a_t = ac[ts]
    a_prev = np.where(prev_ts >= 0, ac[np.clip(prev_ts, 0, T - 1)], final)
    return ac, ts, prev_ts, a_t, a_prev


@dataclasses.dataclass(frozen=True, eq=False)
class CogVideoXDDIMSampler:
    """`CogVideoXDDIMScheduler` (η = 0), the 7B pipeline's 'ddim' option."""

    num_steps: int
    model_timesteps: np.ndarray     # int32 [N]
    sqrt_alpha: np.ndarray          # float32 [N]  √ᾱ_t
    sqrt_one_minus_alpha: np.ndarray
    a_t: np.ndarray
    b_t: np.ndarray
    prediction_type: str = "v_prediction"
    alpha_next: np.ndarray | None = None   # float32 [N]  ᾱ after step i (1 at the end)
    needs_noise = False

    def init_state(self, sample):
        return ()

    def step(self, i, sample, model_output, state, noise=None):
        x0 = v_to_x0(sample, model_output, _row(self.sqrt_alpha, i),
                     _row(self.sqrt_one_minus_alpha, i), self.prediction_type)
        return ddim_step(sample, x0, _row(self.a_t, i), _row(self.b_t, i)), state


def cogvideox_ddim(num_inference_steps: int = 50,
                   cfg: S.CogVideoXScheduleConfig = S.COGVIDEOX_5B) -> CogVideoXDDIMSampler:
    _, ts, _, a_t, a_prev = _cog_tables(num_inference_steps, cfg)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = np.sqrt((1 - a_prev) / (1 - a_t))
        bt = np.sqrt(a_prev) - np.sqrt(a_t) * at
    f32 = lambda x: np.asarray(x, np.float32)
    return CogVideoXDDIMSampler(num_inference_steps, ts.astype(np.int32), f32(np.sqrt(a_t)),
                                f32(np.sqrt(1 - a_t)), f32(at), f32(bt), cfg.prediction_type,
                                alpha_next=f32(a_prev))


@dataclasses.dataclass(frozen=True, eq=False)
class CogVideoXDPMSampler:
    """`CogVideoXDPMScheduler` as the released 7B pipeline drives it (docs/reference/mvdit7b.md §6).

    Stochastic DPM-Solver++(2M): fresh Gaussian noise at every step (η is ignored); the previous
    step's x0 is carried; steps whose prev_t < 0 (the last) and the first step are first order.
    The diffusers step draws one noise tensor for a first-order step and two (using the second) for
    a second-order one; here each step consumes exactly one.
    """

    num_steps: int
    model_timesteps: np.ndarray     # int32 [N]
    sqrt_alpha: np.ndarray          # float32 [N]
    sqrt_one_minus_alpha: np.ndarray
    mult1: np.ndarray
    mult2: np.ndarray
    mult3: np.ndarray               # 1 on first-order steps
    mult4: np.ndarray               # 0 on first-order steps
    mult_noise: np.ndarray
    second_order: np.ndarray        # bool [N], for inspection
    prediction_type: str = "v_prediction"
    alpha_next: np.ndarray | None = None   # float32 [N]  ᾱ after step i (1 at the end)
    needs_noise = True

    def init_state(self, sample):
        """The carried previous x0 (float32; unused until the second step)."""
        return jnp.zeros(sample.shape, _F32)

    def step(self, i, sample, model_output, state, noise):
        x0 = v_to_x0(sample, model_output, _row(self.sqrt_alpha, i),
                     _row(self.sqrt_one_minus_alpha, i), self.prediction_type)
        prev = dpm_solver_2m_sde_step(sample, x0, state, noise, _row(self.mult1, i),
                                      _row(self.mult2, i), _row(self.mult3, i),
                                      _row(self.mult4, i), _row(self.mult_noise, i))
        return prev, x0


def dpm_coefficients(a_t: np.ndarray, a_prev: np.ndarray, a_back: np.ndarray | None):
    """(mult1, mult2, mult3, mult4, mult_noise) of CogVideoXDPMScheduler.get_variables/get_mult,
    float64, with IEEE limits (λ = ±∞ at ᾱ = 0 / 1)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = np.log(np.sqrt(a_t / (1 - a_t)))
        lam_next = np.log(np.sqrt(a_prev / (1 - a_prev)))
        h = lam_next - lam
        mult1 = np.sqrt((1 - a_prev) / (1 - a_t)) * np.exp(-h)
        mult2 = np.expm1(-2 * h) * np.sqrt(a_prev)
        mult_noise = np.sqrt(1 - a_prev) * np.sqrt(1 - np.exp(-2 * h))
        if a_back is None:
            return mult1, mult2, None, None, mult_noise
        lam_prev = np.log(np.sqrt(a_back / (1 - a_back)))
        r = (lam - lam_prev) / h
        return mult1, mult2, 1 + 1 / (2 * r), 1 / (2 * r), mult_noise


def cogvideox_dpm(num_inference_steps: int = 50,
                  cfg: S.CogVideoXScheduleConfig = S.COGVIDEOX_5B) -> CogVideoXDPMSampler:
    """The released 7B sampler (50 steps, trailing, v-prediction, zero-terminal SNR)."""
    ac, ts, prev_ts, a_t, a_prev = _cog_tables(num_inference_steps, cfg)
    n = num_inference_steps
    m1, m2, m3, m4, mn = (np.zeros(n) for _ in range(5))
    second = np.zeros(n, bool)
    for i in range(n):
        back = ac[ts[i - 1]] if i > 0 else None
        c1, c2, c3, c4, cn = dpm_coefficients(a_t[i], a_prev[i], back)
        second[i] = i > 0 and prev_ts[i] >= 0
        m1[i], m2[i], mn[i] = c1, c2, cn
        m3[i], m4[i] = (c3, c4) if second[i] else (1.0, 0.0)
    for name, arr in (("mult1", m1), ("mult2", m2), ("mult3", m3), ("mult4", m4), ("noise", mn)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"non-finite DPM {name} coefficient; schedule {cfg} × {n} steps")
    f32 = lambda x: np.asarray(x, np.float32)
    return CogVideoXDPMSampler(n, ts.astype(np.int32), f32(np.sqrt(a_t)), f32(np.sqrt(1 - a_t)),
                               f32(m1), f32(m2), f32(m3), f32(m4), f32(mn), second,
                               cfg.prediction_type, alpha_next=f32(a_prev))


# ------------------------------------------------------------------------------------------------
# Flow matching: Euler
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class FlowEulerSampler:
    """`FlowMatchEulerDiscreteScheduler` (first-order, deterministic): the released 17B sampler."""

    num_steps: int
    model_timesteps: np.ndarray     # float32 [N], σ·1000
    sigmas: np.ndarray              # float32 [N + 1], terminal 0
    dt: np.ndarray                  # float32 [N], σ_{i+1} − σ_i
    needs_noise = False

    def init_state(self, sample):
        return ()

    def step(self, i, sample, model_output, state, noise=None):
        return flow_euler_step(sample, model_output, _row(self.dt, i)), state


def flow_euler(num_inference_steps: int = 10, cfg: S.FlowMatchConfig = S.WAN_17B_FLOW
               ) -> FlowEulerSampler:
    """10 steps: default 17B run (FusionX LoRA); 50: no LoRA (docs/reference/mvdit17b.md §6.2)."""
    sig, ts = S.flow_match_sigmas(num_inference_steps, cfg)
    dt = (sig[1:] - sig[:-1]).astype(np.float32)
    return FlowEulerSampler(num_inference_steps, ts, sig, dt)


# ------------------------------------------------------------------------------------------------
# Flow matching: UniPC (bh2, predict-x0, flow sigmas)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class FlowUniPCSampler:
    """diffusers `UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)`.

    Multistep predictor (UniP) + corrector (UniC) in x0 form. State: (last_sample, history of the
    last `order` x0 predictions, newest first). K = solver_order − 1 history terms per update.
    """

    num_steps: int
    model_timesteps: np.ndarray     # int32 [N]
    sigmas: np.ndarray              # float32 [N + 1]
    solver_order: int
    # predictor at step i: x = pA·x − pB·m0 − pC·Σ_k p_rho[k]·(m_{k+1} − m0)/p_rk[k]
    pA: np.ndarray
    pB: np.ndarray
    pC: np.ndarray
    p_rk: np.ndarray                # [N, K]
    p_rho: np.ndarray               # [N, K]
    # corrector at step i (of the sample the predictor of step i − 1 produced):
    # x = cA·x_last − cB·m0 − cC·(Σ_k c_rho[k]·(m_{k+1} − m0)/c_rk[k] + c_last·(x0_i − m0))
    use_corrector: np.ndarray       # bool [N]
    cA: np.ndarray
    cB: np.ndarray
    cC: np.ndarray
    c_rk: np.ndarray
    c_rho: np.ndarray
    c_last: np.ndarray
    orders: np.ndarray              # int [N], predictor order per step
    needs_noise = False

    def init_state(self, sample):
        return (sample.astype(_F32), jnp.zeros((self.solver_order,) + sample.shape, _F32))

    def step(self, i, sample, model_output, state, noise=None):
        last_sample, hist = state            # hist[0] = x0 of step i − 1, hist[1] of i − 2, …
        sigma = _row(self.sigmas, i)
        x0 = sample.astype(_F32) - _mul_keep(sigma, model_output)

        # Corrector (UniC): refines the sample the previous predictor produced, using x0 now.
        m0 = hist[0]
        corr = jnp.zeros_like(x0)
        c_rk, c_rho = _row(self.c_rk, i), _row(self.c_rho, i)
        for k in range(self.solver_order - 1):
            corr = corr + c_rho[k] * ((hist[k + 1] - m0) / c_rk[k])
        corrected = (_row(self.cA, i) * last_sample - _row(self.cB, i) * m0
                     - _row(self.cC, i) * (corr + _row(self.c_last, i) * (x0 - m0)))
        x = jnp.where(_row(self.use_corrector, i), corrected, sample.astype(_F32))

        # Predictor (UniP) from x with history [x0, hist[0], …].
        new_hist = jnp.concatenate([x0[None], hist[:-1]], axis=0)
        pred = jnp.zeros_like(x0)
        p_rk, p_rho = _row(self.p_rk, i), _row(self.p_rho, i)
        for k in range(self.solver_order - 1):
            pred = pred + p_rho[k] * ((new_hist[k + 1] - x0) / p_rk[k])
        prev = _row(self.pA, i) * x - _row(self.pB, i) * x0 - _row(self.pC, i) * pred
        return prev.astype(sample.dtype), (x, new_hist)


def _unipc_update_coeffs(sig: np.ndarray, t_idx: int, s_idx: Sequence[int], order: int,
                         corrector: bool):
    """Scalar coefficients of one UniPC bh2 update from σ index `s_idx[0]` to `t_idx`, with history
    σ indices s_idx[1:], mirroring diffusers' float32 torch arithmetic."""
    f = np.float32
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        def alpha_sigma(s):
            s = f(s)
            return f(1) - s, s

        def lam(s):
            a, s_ = alpha_sigma(s)
            return f(np.log(a)) - f(np.log(s_))

        a_t, s_t = alpha_sigma(sig[t_idx])
        a_s0, s_s0 = alpha_sigma(sig[s_idx[0]])
        h = f(lam(sig[t_idx]) - lam(sig[s_idx[0]]))
        rks = [f((lam(sig[s_idx[k]]) - lam(sig[s_idx[0]])) / h) for k in range(1, order)]
        rks_all = np.array(rks + [1.0], np.float64)
        hh = f(-h)
        h_phi_1 = f(np.expm1(hh))
        h_phi_k = f(h_phi_1 / hh - f(1))
        B_h = f(np.expm1(hh))
        fact = 1
        R, b = [], []
        for i in range(1, order + 1):
            R.append(rks_all ** (i - 1))
            b.append(float(h_phi_k) * fact / float(B_h))
            fact *= i + 1
            h_phi_k = f(h_phi_k / hh - f(1.0 / fact))
        R, b = np.array(R), np.array(b)
        A = f(s_t / s_s0)
        Bc = f(a_t * h_phi_1)
        Cc = f(a_t * B_h)
        if corrector:
            rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        else:
            rhos = (np.zeros(0) if order == 1 else np.array([0.5]) if order == 2
                    else np.linalg.solve(R[:-1, :-1], b[:-1]))
    return A, Bc, Cc, np.array(rks, np.float32), rhos.astype(np.float32)


def flow_unipc(num_inference_steps: int = 50, flow_shift: float = 5.0, solver_order: int = 2,
               lower_order_final: bool = True, disable_corrector: Sequence[int] = (),
               num_train_timesteps: int = 1000) -> FlowUniPCSampler:
    """UniPC-bh2 on Wan flow sigmas, as `UniPCMultistepScheduler(prediction_type=
    "flow_prediction", use_flow_sigmas=True, flow_shift=…, solver_order=…)`.

    Not the released 17B sampler (that is Euler); the diffusers / upstream Wan pipelines' one.
    """
    if not lower_order_final:
        raise ValueError("lower_order_final=False steps to σ = 0 with a multistep update (NaN)")
    sig, ts = S.unipc_flow_sigmas(num_inference_steps, flow_shift, num_train_timesteps)
    n, K = num_inference_steps, max(solver_order - 1, 1)
    orders = np.array([min(solver_order, n - i, i + 1) for i in range(n)])
    tab = {k: np.zeros(n, np.float32) for k in ("pA", "pB", "pC", "cA", "cB", "cC", "c_last")}
    p_rk, p_rho = np.ones((n, K), np.float32), np.zeros((n, K), np.float32)
    c_rk, c_rho = np.ones((n, K), np.float32), np.zeros((n, K), np.float32)
    use_corr = np.zeros(n, bool)
    for i in range(n):
        o = int(orders[i])
        A, Bc, Cc, rks, rhos = _unipc_update_coeffs(sig, i + 1, [i - k for k in range(o)], o,
                                                    corrector=False)
        tab["pA"][i], tab["pB"][i], tab["pC"][i] = A, Bc, Cc
        p_rk[i, :o - 1], p_rho[i, :o - 1] = rks, rhos
        if i > 0 and (i - 1) not in disable_corrector:
            use_corr[i] = True
            oc = int(orders[i - 1])
            A, Bc, Cc, rks, rhos = _unipc_update_coeffs(sig, i, [i - 1 - k for k in range(oc)],
                                                        oc, corrector=True)
            tab["cA"][i], tab["cB"][i], tab["cC"][i] = A, Bc, Cc
            c_rk[i, :oc - 1], c_rho[i, :oc - 1], tab["c_last"][i] = rks, rhos[:-1], rhos[-1]
    return FlowUniPCSampler(n, ts.astype(np.int32), sig, solver_order, tab["pA"], tab["pB"],
                            tab["pC"], p_rk, p_rho, use_corr, tab["cA"], tab["cB"], tab["cC"],
                            c_rk, c_rho, tab["c_last"], orders)


Sampler = Any  # any of the four classes above (duck-typed: num_steps, model_timesteps, step, …)
