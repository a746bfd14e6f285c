"""Long-video windows, latent pinning, stitching, reference-image sizing and the step callback."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtvjax.sample import long_video as LV
from mtvjax.sample import reference_image as RI
from mtvjax.diffusion import samplers
from mtvjax.sample.loop import make_sample_fn


def test_window_plan_covers_the_request():
    plan = LV.plan_windows(49, 49, 9)
    assert plan.starts == (0,) and plan.overlap == 0
    plan = LV.plan_windows(89, 49, 9)               # the released 17B long-video example
    assert plan.starts == (0, 40) and plan.padded_frames == 89 and plan.overlap_latents == 3
    plan = LV.plan_windows(100, 49, 9)
    assert plan.starts == (0, 40, 80) and plan.padded_frames == 129
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        LV.plan_windows(100, 49, 8)


def test_window_motion_pads_the_tail_with_the_last_frame():
    motion = np.arange(30, dtype=np.float32)[:, None, None] * np.ones((1, 24, 3), np.float32)
    plan = LV.plan_windows(30, 17, 9)
    windows = LV.window_motion(motion, plan)
    chex.assert_shape(windows, (3, 17, 24, 3))
    np.testing.assert_array_equal(windows[1, :, 0, 0], np.arange(8, 25))
    np.testing.assert_array_equal(windows[2, -5:, 0, 0], [28, 29, 29, 29, 29])  # 30..32 → 29


def test_stitch_cross_fades_the_overlap_and_cuts_to_length():
    plan = LV.plan_windows(25, 17, 9)
    a = np.zeros((17, 2, 2, 3), np.float32)
    b = np.ones((17, 2, 2, 3), np.float32)
    out = LV.stitch([a, b], plan)
    chex.assert_shape(out, (25, 2, 2, 3))
    fade = out[8:17, 0, 0, 0]
    np.testing.assert_allclose(fade, (np.arange(9) + 1) / 10, rtol=1e-6)
    np.testing.assert_array_equal(out[:8], 0.0)
    np.testing.assert_array_equal(out[17:], 1.0)
    joints = LV.stitch([np.zeros((17, 24, 3)), np.ones((17, 24, 3))], plan)   # 3-D items too
    chex.assert_shape(joints, (25, 24, 3))


@pytest.mark.parametrize("make, identity", [
    (lambda: samplers.cogvideox_dpm(50), lambda a, b: a ** 2 + b ** 2),   # variance preserving
    (lambda: samplers.cogvideox_ddim(50), lambda a, b: a ** 2 + b ** 2),
    (lambda: samplers.flow_euler(50), lambda a, b: a + b)])               # rectified flow
def test_marginal_reaches_clean_latents_at_the_last_step(make, identity):
    """At 50 steps every released sampler ends at zero noise (CogVideoX: trailing t = 19 → −1)."""
    a, b = LV.marginal_after_step(make())
    assert a.shape == (50,) and np.all(np.diff(a) >= 0)       # noise level only falls
    np.testing.assert_allclose([a[-1], b[-1]], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(identity(a, b), 1.0, rtol=1e-5)


def test_hard_pinning_ends_on_the_conditioning_latents_and_ramp_blends():
    sampler = samplers.flow_euler(4)
    shape = (1, 5, 2, 2, 3)
    clean = jnp.full((1, 2, 2, 2, 3), 0.7)
    denoise = lambda x, t, flags: x * 0.3       # any model
    for mode, exact in (("hard", True), ("ramp", False)):
        post = LV.pin_first_latents(sampler, LV.blend_weights(2, mode))
        run = make_sample_fn(denoise, sampler, shape, post_step_fn=post)
        out = run(jax.random.PRNGKey(0), post_args=(clean,))
        np.testing.assert_allclose(out[:, 0], 0.7, rtol=1e-6)   # weight 1 in both modes
        assert np.allclose(out[:, 1], 0.7) == exact
        free = make_sample_fn(denoise, sampler, shape)(jax.random.PRNGKey(0))
        np.testing.assert_allclose(out[:, 2:], free[:, 2:], rtol=1e-6)   # untouched frames
    with pytest.raises(ValueError, match="unknown overlap blend"):
        LV.blend_weights(2, "soft")


def test_step_callback_sees_every_step():
    seen = []
    run = make_sample_fn(lambda x, t, f: x, samplers.flow_euler(5), (1, 2),
                         step_callback=seen.append)
    jax.block_until_ready(run(jax.random.PRNGKey(0)))
    jax.effects_barrier()
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_reference_image_sizing(tmp_path):
    image = np.zeros((90, 70, 3), np.uint8)
    image[:, :35] = 255                                  # left half white
    out = RI.fit_reference(image, (64, 64))
    chex.assert_shape(out, (64, 64, 3))
    assert out[:, :28].mean() > 200 and out[:, 36:].mean() < 50   # centre crop keeps the split
    assert RI.fit_reference(image, (0, 0)).shape == (576, 448, 3)  # the h/w 1.29 bucket
    assert RI.bucket_for(512, 512, 256) == (256, 256)
    with pytest.raises(ValueError, match="multiples of 16"):
        RI.fit_reference(image, (60, 64))
    with pytest.raises(FileNotFoundError, match="nope.png: reference image not found"):
        RI.load_image(tmp_path / "nope.png")
    np.testing.assert_array_equal(RI.to_uint8(RI.to_signed(image)), image)
