"""Schedules, sampler steps, guidance and the jitted loop, against diffusers' schedulers (test-only
oracle; pure torch/numpy, no download)."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (CogVideoXDDIMScheduler, CogVideoXDPMScheduler,  # noqa: E402
                       FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler)
import diffusers.schedulers.scheduling_dpm_cogvideox as dpm_module  # noqa: E402

from mtvjax.sample import guidance as G  # noqa: E402
from mtvjax.sample import loop as L  # noqa: E402
from mtvjax.diffusion import samplers as SM  # noqa: E402
from mtvjax.diffusion import schedules as S  # noqa: E402

SHAPE = (1, 3, 4, 6, 6)   # [B, F, C, H, W], tiny
TOL = 1e-5

# The released CogVideoX-5b scheduler_config.json (docs/reference/mvdit7b.md §6, "Scheduler").
COG_KW = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
              beta_schedule="scaled_linear", prediction_type="v_prediction",
              rescale_betas_zero_snr=True, snr_shift_scale=1.0, timestep_spacing="trailing",
              set_alpha_to_one=True, clip_sample=False, steps_offset=0)
# A variant that exercises the SNR shift and a genuinely second-order second step.
COG_ALT = dict(COG_KW, snr_shift_scale=3.0, rescale_betas_zero_snr=False)


def _cfg(kw) -> S.CogVideoXScheduleConfig:
    return S.CogVideoXScheduleConfig(
        num_train_timesteps=kw["num_train_timesteps"], beta_start=kw["beta_start"],
        beta_end=kw["beta_end"], beta_schedule=kw["beta_schedule"],
        prediction_type=kw["prediction_type"], snr_shift_scale=kw["snr_shift_scale"],
        rescale_betas_zero_snr=kw["rescale_betas_zero_snr"],
        timestep_spacing=kw["timestep_spacing"], set_alpha_to_one=kw["set_alpha_to_one"],
        steps_offset=kw["steps_offset"])


def _rand(rng, shape=SHAPE):
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [COG_KW, COG_ALT], ids=["released", "shift3-norescale"])
@pytest.mark.parametrize("cls", [CogVideoXDDIMScheduler, CogVideoXDPMScheduler])
def test_cogvideox_alphas_cumprod_match_diffusers(kw, cls):
    ref = cls(**kw).alphas_cumprod.numpy()
    ours = S.cogvideox_alphas_cumprod(_cfg(kw))
    assert ours.dtype == np.float64 and ref.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_zero_terminal_snr_and_default_config():
    ac = S.cogvideox_alphas_cumprod()
    raw = np.cumprod(1 - S.scaled_linear_betas(0.00085, 0.012, 1000))
    assert ac[-1] == 0.0                         # infinite noise at t = 999
    assert ac[0] == pytest.approx(raw[0], rel=1e-12)
    assert np.all(np.diff(ac) < 0)
    # snr_shift_scale = 1 (released) is the identity; s divides the SNR.
    np.testing.assert_array_equal(S.snr_shift(raw, 1.0), raw)
    shifted = S.snr_shift(raw, 3.0)
    np.testing.assert_allclose(shifted / (1 - shifted), raw / (1 - raw) / 3.0, rtol=1e-10)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("n", [50, 30, 7])
def test_spaced_timesteps_match_diffusers(spacing, n):
    d = CogVideoXDPMScheduler(**dict(COG_KW, timestep_spacing=spacing))
    d.set_timesteps(n)
    np.testing.assert_array_equal(S.spaced_timesteps(n, 1000, spacing), d.timesteps.numpy())


def test_trailing_50_is_999_to_19():
    np.testing.assert_array_equal(S.spaced_timesteps(50), np.arange(999, 0, -20))
    s = SM.cogvideox_dpm(50)
    np.testing.assert_array_equal(s.model_timesteps, np.arange(999, 0, -20))
    # First and last steps first order, the rest second order (§6 "Scheduler maths").
    assert not s.second_order[0] and not s.second_order[-1] and s.second_order[1:-1].all()


@pytest.mark.parametrize("n", [10, 50, 7])
def test_flow_sigmas_match_diffusers(n):
    d = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    d.set_timesteps(n, mu=1.0)        # mu is ignored without dynamic shifting (§6.6)
    sig, ts = S.flow_match_sigmas(n)
    np.testing.assert_array_equal(sig, d.sigmas.numpy())
    np.testing.assert_array_equal(ts, d.timesteps.numpy())


def test_flow_sigmas_doc_values():
    sig, _ = S.flow_match_sigmas(10)
    doc = [1.0, 0.975743, 0.946273, 0.909707, 0.863132, 0.801786, 0.717317, 0.593619, 0.395095,
           0.024414, 0.0]
    np.testing.assert_allclose(sig, doc, atol=1e-6)
    sig50, _ = S.flow_match_sigmas(50)
    np.testing.assert_allclose(sig50[:3], [1.0, 0.995872, 0.991605], atol=1e-6)
    np.testing.assert_allclose(sig50[-5:-1], [0.260762, 0.192804, 0.114819, 0.024414], atol=1e-6)
    train = S.flow_train_sigmas()
    assert train[0] == 1.0 and train[-1] == pytest.approx(0.00498, abs=1e-5)


@pytest.mark.parametrize("n,shift", [(50, 5.0), (20, 3.0)])
def test_unipc_flow_sigmas_match_diffusers(n, shift):
    d = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                flow_shift=shift)
    d.set_timesteps(n)
    sig, ts = S.unipc_flow_sigmas(n, shift)
    np.testing.assert_array_equal(sig, d.sigmas.numpy())
    np.testing.assert_array_equal(ts, d.timesteps.numpy())


# ------------------------------------------------------------------------------------------------
# Steps vs diffusers step(), fed identical fake model outputs (and noise)
# ------------------------------------------------------------------------------------------------


def _compare_steps(ref_step, sampler, n_steps, seed, noise=False):
    """Run both step-by-step from the same sample with the same random model outputs. Returns the
    per-step max abs differences and the final magnitude."""
    rng = np.random.default_rng(seed)
    x = _rand(rng)
    xt, xj = torch.from_numpy(x), jnp.asarray(x)
    state = sampler.init_state(xj)
    step = jax.jit(sampler.step)
    errs = []
    for i in range(n_steps):
        out = (0.5 * np.asarray(xt) + _rand(rng)).astype(np.float32)   # sample-dependent "model"
        eps = _rand(rng) if noise else None
        xt = ref_step(i, torch.from_numpy(out), xt, eps)
        xj, state = step(i, xj, jnp.asarray(out), state,
                         None if eps is None else jnp.asarray(eps))
        errs.append(float(np.abs(xt.numpy() - np.asarray(xj)).max()))
    return np.array(errs), float(np.abs(xt.numpy()).max())


@pytest.mark.parametrize("kw,n", [(COG_KW, 50), (COG_ALT, 50), (COG_KW, 30)],
                         ids=["released-50", "alt-50", "released-30"])
def test_ddim_matches_diffusers(kw, n):
    d = CogVideoXDDIMScheduler(**kw)
    d.set_timesteps(n)
    ts = d.timesteps

    def ref(i, out, x, _):
        return d.step(out, ts[i], x, return_dict=False)[0]

    errs, mag = _compare_steps(ref, SM.cogvideox_ddim(n, _cfg(kw)), n, seed=1)
    assert errs[0] < 1e-6
    assert errs.max() < TOL * max(1.0, mag), errs


@pytest.fixture
def patched_dpm_noise(monkeypatch):
    """Make the diffusers DPM step use given noise: it draws via module-level `randn_tensor`
    (once on first-order steps, twice on second-order ones, using the second)."""
    box = {"noise": None, "draws": 0}

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        box["draws"] += 1
        return box["noise"].clone()

    monkeypatch.setattr(dpm_module, "randn_tensor", fake_randn)
    return box


@pytest.mark.parametrize("kw,n", [(COG_KW, 50), (COG_ALT, 50), (COG_KW, 30), (COG_KW, 1)],
                         ids=["released-50", "alt-50", "released-30", "released-1"])
def test_dpm_matches_diffusers(kw, n, patched_dpm_noise):
    d = CogVideoXDPMScheduler(**kw)
    d.set_timesteps(n)
    ts = d.timesteps
    state = {"old": None}
    draws = []

    def ref(i, out, x, eps):
        patched_dpm_noise["noise"] = torch.from_numpy(eps)
        before = patched_dpm_noise["draws"]
        x, state["old"] = d.step(out, state["old"], ts[i], ts[i - 1] if i > 0 else None, x,
                                 return_dict=False)
        draws.append(patched_dpm_noise["draws"] - before)
        return x

    sampler = SM.cogvideox_dpm(n, _cfg(kw))
    errs, mag = _compare_steps(ref, sampler, n, seed=2, noise=True)
    assert errs[0] < 1e-6
    assert errs.max() < TOL * max(1.0, mag), errs
    np.testing.assert_array_equal(np.array(draws) - 1, sampler.second_order.astype(int))


def test_dpm_released_prev_timestep_quirk():
    """prev_t = t − T // N (not the next listed timestep): at N = 30 they differ."""
    s30 = SM.cogvideox_dpm(30)
    ac = S.cogvideox_alphas_cumprod()
    t = s30.model_timesteps
    assert (t[:-1] - t[1:] != 1000 // 30).any()
    # ᾱ_prev enters mult2 = expm1(−2h)·√ᾱ_prev; check the table used t − 33.
    _, m2, _, _, _ = SM.dpm_coefficients(ac[t[5]], ac[t[5] - 33], ac[t[4]])
    assert np.float32(m2) == s30.mult2[5]


@pytest.mark.parametrize("n", [10, 50])
def test_flow_euler_matches_diffusers(n):
    d = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    d.set_timesteps(n)
    ts = d.timesteps

    def ref(i, out, x, _):
        return d.step(out, ts[i], x, return_dict=False)[0]

    errs, mag = _compare_steps(ref, SM.flow_euler(n), n, seed=3)
    assert errs[0] < 1e-6
    assert errs.max() < TOL * max(1.0, mag), errs


@pytest.mark.parametrize("n,order", [(10, 2), (30, 2), (12, 3), (6, 1)])
def test_flow_unipc_matches_diffusers(n, order):
    d = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                flow_shift=5.0, solver_order=order, solver_type="bh2",
                                lower_order_final=True)
    d.set_timesteps(n)
    ts = d.timesteps

    def ref(i, out, x, _):
        return d.step(out, ts[i], x, return_dict=False)[0]

    sampler = SM.flow_unipc(n, 5.0, solver_order=order)
    errs, mag = _compare_steps(ref, sampler, n, seed=4)
    assert errs[0] < 1e-6
    assert errs.max() < TOL * max(1.0, mag), errs


# ------------------------------------------------------------------------------------------------
# Guidance
# ------------------------------------------------------------------------------------------------


def test_cfg_formula_and_scale_one_exact():
    rng = np.random.default_rng(5)
    c, u = jnp.asarray(_rand(rng)), jnp.asarray(_rand(rng))
    chex.assert_trees_all_equal(G.cfg(c, u, 1.0), c)
    chex.assert_trees_all_equal(jax.jit(G.cfg)(c, u, jnp.float32(1.0)), c)  # traced scale
    np.testing.assert_allclose(G.cfg(c, u, 3.0), u + 3.0 * (c - u), rtol=0, atol=0)
    p = [jnp.asarray(_rand(rng)) for _ in range(3)]
    np.testing.assert_allclose(G.combine(p, [6.0, 2.0]),
                               p[0] + 6.0 * (p[1] - p[0]) + 2.0 * (p[2] - p[1]), atol=1e-5)


def test_dynamic_cfg_matches_pipeline_expression():
    gs, n = 3.0, 50
    table = G.motion_cfg_7b(gs, dynamic=True).scales_at(np.arange(999, 0, -20), n)
    for row, t in zip(table, range(999, 0, -20)):
        # diffusers CogVideoX pipeline, use_dynamic_cfg branch (t is the timestep value)
        expected = 1 + gs * ((1 - math.cos(math.pi * ((n - t) / n) ** 5.0)) / 2)
        assert row[0] == expected


# ------------------------------------------------------------------------------------------------
# The jitted loop
# ------------------------------------------------------------------------------------------------


def _point_mass_v_denoiser(targets):
    """Exact v-prediction for data = a point mass at targets[flag] (CogVideoX ᾱ table)."""
    sa = jnp.asarray(np.sqrt(S.cogvideox_alphas_cumprod()), jnp.float32)
    s1a = jnp.asarray(np.sqrt(1 - S.cogvideox_alphas_cumprod()), jnp.float32)
    t0, t1 = (jnp.asarray(t) for t in targets)

    def fn(x, t, flags):
        a, b = sa[t][:, None, None, None, None], s1a[t][:, None, None, None, None]
        c = jnp.where(flags[:, None, None, None, None], t1, t0)
        eps = (x - a * c) / b
        return a * eps - b * c
    return fn


def test_ddim_loop_closed_form_trajectory():
    """DDIM on a point mass: x_i = √ᾱ_prev·c + √(1−ᾱ_prev)·x_T after every step, x_0 = c."""
    rng = np.random.default_rng(6)
    c = _rand(rng, SHAPE[1:])
    sampler = SM.cogvideox_ddim(20)
    run = L.make_sample_fn(_point_mass_v_denoiser((c, c)), sampler, SHAPE,
                           return_trajectory=True)
    key = jax.random.PRNGKey(0)
    x_T = np.asarray(jax.random.normal(jax.random.split(key, 3)[0], SHAPE, jnp.float32))
    final, traj = run(key)
    ac = S.cogvideox_alphas_cumprod()
    prev = np.append(sampler.model_timesteps[1:], -1)
    a_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], 1.0)
    expected = (np.sqrt(a_prev)[:, None, None, None, None, None] * c
                + np.sqrt(1 - a_prev)[:, None, None, None, None, None] * x_T)
    np.testing.assert_allclose(np.asarray(traj), expected, atol=2e-5)
    np.testing.assert_allclose(np.asarray(final), np.broadcast_to(c, SHAPE), atol=1e-5)


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_dpm_loop_motion_cfg_closed_form(batch_cfg):
    """Released 7B recipe (DPM 50, motion CFG 3.0): on point masses the guided x0 is
    c_u + 3(c_c − c_u) at every step, and the last (first-order, ᾱ_prev = 1) step returns it."""
    rng = np.random.default_rng(7)
    cu, cc = _rand(rng, SHAPE[1:]), _rand(rng, SHAPE[1:])
    calls = []
    base = _point_mass_v_denoiser((cu, cc))

    def fn(x, t, flags):
        calls.append((x.shape[0], t.dtype, flags.shape))
        return base(x, t, flags)

    run = L.make_sample_fn(fn, SM.cogvideox_dpm(50), SHAPE, guidance=G.motion_cfg_7b(3.0),
                           batch_cfg=batch_cfg)
    out = run(jax.random.PRNGKey(1))
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(cu + 3.0 * (cc - cu), SHAPE),
                               atol=2e-5)
    # Traced once: one batch-2 call per step, or two batch-1 calls.
    assert calls == ([(2, jnp.int32, (2,))] if batch_cfg else [(1, jnp.int32, (1,))] * 2)


def test_dynamic_cfg_in_loop_uses_last_step_scale():
    rng = np.random.default_rng(8)
    cu, cc = _rand(rng, SHAPE[1:]), _rand(rng, SHAPE[1:])
    g = G.motion_cfg_7b(3.0, dynamic=True)
    sampler = SM.cogvideox_ddim(50)
    out = L.sample(_point_mass_v_denoiser((cu, cc)), sampler, jax.random.PRNGKey(2), SHAPE,
                   guidance=g)
    s_last = np.float32(g.scales_at(sampler.model_timesteps, 50)[-1, 0])
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(cu + s_last * (cc - cu), SHAPE),
                               atol=2e-5)


def test_flow_euler_loop_closed_form_trajectory():
    """Exact velocity for a point mass: straight lines, x_i = (1 − σ_i)·c + σ_i·x_T."""
    rng = np.random.default_rng(9)
    c = jnp.asarray(_rand(rng, SHAPE[1:]))

    def fn(x, t, flags):
        sigma = (t / 1000.0)[:, None, None, None, None]
        return (x - c) / sigma
    sampler = SM.flow_euler(10)
    key = jax.random.PRNGKey(3)
    final, traj = L.make_sample_fn(fn, sampler, SHAPE, return_trajectory=True)(key)
    x_T = np.asarray(jax.random.normal(jax.random.split(key, 3)[0], SHAPE, jnp.float32))
    sig = sampler.sigmas[1:, None, None, None, None, None]
    np.testing.assert_allclose(np.asarray(traj), (1 - sig) * np.asarray(c) + sig * x_T, atol=2e-5)


def _nonlinear_fake(xp, x, t, flags, tscale):
    """A smooth nonlinear stand-in model usable with torch and jnp."""
    f = xp.tanh(x) * 0.5 + (t / tscale) * 0.25
    return f + xp.where(flags, 0.3, -0.2) * x


def test_loop_matches_diffusers_dpm_pipeline(patched_dpm_noise):
    """The whole jitted 7B loop (DPM 50, CFG 3.0, uncond slot 0) vs a diffusers-driven loop fed the
    same initial latents and the same per-step noise (step i: fold_in(split(key, 3)[1], i))."""
    n, key = 50, jax.random.PRNGKey(4)
    rng = np.random.default_rng(10)
    x_init = _rand(rng)

    def fn(x, t, flags):
        fl = flags[:, None, None, None, None]
        tt = t.astype(jnp.float32)[:, None, None, None, None]
        return _nonlinear_fake(jnp, x, tt, fl, 1000.0)

    out = L.make_sample_fn(fn, SM.cogvideox_dpm(n), SHAPE, guidance=G.motion_cfg_7b(3.0))(
        key, latents=x_init)

    k_step = jax.random.split(key, 3)[1]
    d = CogVideoXDPMScheduler(**COG_KW)
    d.set_timesteps(n)
    x, old = torch.from_numpy(x_init), None
    for i, t in enumerate(d.timesteps):
        xin = torch.cat([x, x])
        fl = torch.tensor([False, True])[:, None, None, None, None]
        pred = _nonlinear_fake(torch, xin, float(t), fl, 1000.0).float()
        u, c = pred.chunk(2)
        pred = u + 3.0 * (c - u)
        patched_dpm_noise["noise"] = torch.from_numpy(
            np.array(jax.random.normal(jax.random.fold_in(k_step, i), SHAPE, jnp.float32)))
        x, old = d.step(pred, old, t, d.timesteps[i - 1] if i > 0 else None, x, return_dict=False)
    np.testing.assert_allclose(np.asarray(out), x.numpy(), atol=TOL * max(1, x.abs().max().item()))


@pytest.mark.parametrize("which", ["euler", "unipc"])
def test_loop_matches_diffusers_flow_pipeline(which):
    """17B recipe (text CFG 6.0, negative slot 0) with flow Euler or UniPC vs diffusers."""
    n, key = 12, jax.random.PRNGKey(5)
    x_init = _rand(np.random.default_rng(11))
    if which == "euler":
        sampler = SM.flow_euler(n)
        d = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    else:
        sampler = SM.flow_unipc(n, 5.0)
        d = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    flow_shift=5.0)
    d.set_timesteps(n)

    def fn(x, t, flags):
        fl = flags[:, None, None, None, None]
        tt = t.astype(jnp.float32)[:, None, None, None, None]
        return _nonlinear_fake(jnp, x, tt, fl, 1000.0)

    out = L.make_sample_fn(fn, sampler, SHAPE, guidance=G.text_cfg_17b(6.0), batch_cfg=False)(
        key, latents=x_init)
    x = torch.from_numpy(x_init)
    for t in d.timesteps:
        u = _nonlinear_fake(torch, x, float(t), torch.tensor(False), 1000.0)
        c = _nonlinear_fake(torch, x, float(t), torch.tensor(True), 1000.0)
        x = d.step(u + 6.0 * (c - u), t, x, return_dict=False)[0]
    np.testing.assert_allclose(np.asarray(out), x.numpy(), atol=TOL * max(1, x.abs().max().item()))


def test_guidance_scale_one_equals_conditional_run():
    rng = np.random.default_rng(12)
    x_init = _rand(rng)
    seen = []

    def fn(x, t, flags):
        seen.append(x.shape[0])
        return _nonlinear_fake(jnp, x, t.astype(jnp.float32)[:, None, None, None, None],
                               flags[:, None, None, None, None], 1000.0)

    key = jax.random.PRNGKey(6)
    ref = L.sample(fn, SM.cogvideox_dpm(8), key, SHAPE, latents=x_init)
    one = L.sample(fn, SM.cogvideox_dpm(8), key, SHAPE, latents=x_init,
                   guidance=G.motion_cfg_7b(1.0))
    chex.assert_trees_all_equal(ref, one)
    assert seen == [1, 1]          # no unconditional branch at scale 1


def test_determinism_and_key_dependence():
    def fn(x, t, flags):
        return 0.1 * x
    run = L.make_sample_fn(fn, SM.cogvideox_dpm(6), SHAPE, guidance=G.motion_cfg_7b(3.0))
    a = run(jax.random.PRNGKey(0))
    b = run(jax.random.PRNGKey(0))
    c = run(jax.random.PRNGKey(1))
    chex.assert_trees_all_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-2
    # Same initial latents, different key: the stochastic DPM step still differs.
    x0 = jnp.zeros(SHAPE)
    assert np.abs(np.asarray(run(jax.random.PRNGKey(0), latents=x0))
                  - np.asarray(run(jax.random.PRNGKey(1), latents=x0))).max() > 1e-2


def test_whole_loop_is_one_jit_with_model_args_and_bf16():
    """`run` is a single jitted function (lowerable), params travel as jit arguments, and bf16
    latents stay bf16 across steps."""
    def fn(x, t, flags, w):
        return (w * x.astype(jnp.float32)).astype(x.dtype)
    run = L.make_sample_fn(fn, SM.flow_euler(4), SHAPE, jnp.bfloat16,
                           guidance=G.text_cfg_17b(6.0))
    w = jnp.float32(0.5)
    lowered = run.lower(jax.random.PRNGKey(0), w)
    text = lowered.as_text()
    assert "while" in text                      # the scan is one device loop
    out = lowered.compile()(jax.random.PRNGKey(0), w)
    assert out.dtype == jnp.bfloat16 and out.shape == SHAPE
    assert np.isfinite(np.asarray(out, np.float32)).all()


def test_post_step_hook_and_multi_condition_flags():
    """[B, K] flags for text+motion guidance reach the closure; the hook runs after every step."""
    seen = {}

    def fn(x, t, flags):
        seen["flags"] = flags.shape
        return jnp.zeros_like(x)

    def hook(x, i, key):
        return x + 1.0
    g = G.text_motion_cfg_17b(6.0, 2.0)
    out = L.sample(fn, SM.flow_euler(3), jax.random.PRNGKey(0), SHAPE, guidance=g,
                   latents=jnp.zeros(SHAPE), post_step_fn=hook)
    assert seen["flags"] == (3, 2)
    np.testing.assert_array_equal(np.asarray(out), 3.0)
