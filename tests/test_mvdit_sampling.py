"""End-to-end sampling of random-weight tiny MV-DiTs under one jit, with guidance, both families."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from mtvjax.models.mvdit.cogvideox import model as mvdit_cogvideox
from mtvjax.models.mvdit.wan import config as WC
from mtvjax.models.mvdit.wan import model as mvdit_wan
from mtvjax.sample.mvdit_generate import generate_17b, generate_7b

B, F, H, W = 1, 2, 4, 4


@pytest.fixture(scope="module")
def tiny_7b():
    config = load_config("mvdit.py", "tiny")
    config.model.uncond_motion_shape = (F * 24, 128)
    model = mvdit_cogvideox.from_config(config)
    params = mvdit_cogvideox.init_params(model, jax.random.PRNGKey(0))
    # Fresh motion attention starts with a zero output projection: give it weights so the
    # motion tokens (and the unconditional ones) actually change the prediction.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (jax.random.normal(jax.random.PRNGKey(1), x.shape) * 0.05
                         if "attn0" in jax.tree_util.keystr(path) and "to_out" in
                         jax.tree_util.keystr(path) else x), params)
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    ref = jax.random.normal(keys[0], (B, F, H, W, 16))
    motion = jax.random.normal(keys[1], (B, F * 24, 128))
    return model, params, ref, motion


def test_7b_samples_with_motion_cfg_deterministically(tiny_7b):
    model, params, ref, motion = tiny_7b
    key = jax.random.PRNGKey(7)
    out = generate_7b(model, params, ref, motion, key, num_steps=3, motion_cfg=3.0)
    chex.assert_shape(out, (B, F, H, W, 16))
    chex.assert_tree_all_finite(out)
    again = generate_7b(model, params, ref, motion, key, num_steps=3, motion_cfg=3.0)
    np.testing.assert_array_equal(out, again)
    other = generate_7b(model, params, ref, motion, jax.random.PRNGKey(8), num_steps=3)
    assert not np.allclose(out, other)
    plain = generate_7b(model, params, ref, motion, key, num_steps=3, motion_cfg=1.0)
    assert not np.allclose(out, plain, atol=1e-4)      # the unconditional branch matters


def test_7b_guidance_scale_one_is_the_conditional_path(tiny_7b):
    model, params, ref, motion = tiny_7b
    latents = jax.random.normal(jax.random.PRNGKey(3), (B, F, H, W, 16))
    from mtvjax.sample.loop import guided_prediction
    from mtvjax.sample import guidance
    from mtvjax.sample.mvdit_generate import denoise_7b
    t = jnp.int32(500)
    guided = guided_prediction(denoise_7b(model), latents, t, guidance.motion_cfg_7b(1.0),
                               model_args=(params, ref, motion))
    cond = model.apply({"params": params}, latents, ref_latents=ref, timesteps=jnp.full((B,), t),
                       motion_tokens=motion)
    np.testing.assert_array_equal(guided, cond)


def test_17b_samples_with_text_cfg():
    config = WC.wan_config("tiny17b")
    model = mvdit_wan.MVDiTWan(config)
    params = mvdit_wan.init_params(config, jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    y = jax.random.normal(keys[0], (B, F, H, W, 20))
    text = jax.random.normal(keys[1], (B, 8, config.text_dim))
    negative = jax.random.normal(keys[2], (B, 8, config.text_dim))
    image = jax.random.normal(keys[3], (B, 4, config.image_dim))
    motion = jax.random.normal(keys[4], (B, F * 24, config.motion_dim))
    out = generate_17b(model, params, y, text, negative, image, motion, jax.random.PRNGKey(5),
                       num_steps=3, text_cfg=6.0)
    chex.assert_shape(out, (B, F, H, W, 16))
    chex.assert_tree_all_finite(out)
    same = generate_17b(model, params, y, text, negative, image, motion, jax.random.PRNGKey(5),
                        num_steps=3, text_cfg=6.0)
    np.testing.assert_array_equal(out, same)
    with pytest.raises(ValueError, match="unconditional motion tokens"):
        generate_17b(model, params, y, text, negative, image, motion, jax.random.PRNGKey(5),
                     num_steps=3, motion_cfg=3.0)
