"""4DMoT architecture: sizes, windows, first-frame-preserving resampling, parameter count."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from mtvjax.models.fourdmot.model import (FourDMoT, decoded_frames, latent_frames, merge_windows,
                                    split_windows)
from mtvjax.models.fourdmot.layers import (resblock_dilation, temporal_avg_pool2,
                                           temporal_upsample2)
from mtvjax.models.fourdmot.build import build_model

FRAME_COUNTS = (33, 49, 81, 97, 129)


@pytest.fixture(scope="module")
def tiny():
    model = build_model(load_config("4dmot.py", "tiny").model)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 24, 3)))
    return model, variables


def test_paper_parameter_count_without_allocation():
    model = build_model(load_config("4dmot.py", "paper").model)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 49, 24, 3)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
    assert count == 48_323_075
    chex.assert_shape(shapes["quantizer"]["codebook"]["codebook"], (8192, 3072))


@pytest.mark.parametrize("frames", FRAME_COUNTS)
def test_paper_shapes_for_training_frame_counts(frames):
    model = build_model(load_config("4dmot.py", "paper").model)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 24, 3)))
    x = jax.ShapeDtypeStruct((2, frames, 24, 3), jnp.float32)
    z = jax.eval_shape(lambda v, x: model.apply(v, x, method=FourDMoT.encode), variables, x)
    latents = 1 + (frames - 1) // 4
    chex.assert_shape(z, (2, latents, 24, 3072))
    recon, idx = jax.eval_shape(model.apply, variables, x)
    chex.assert_shape(recon, (2, frames, 24, 3))
    chex.assert_shape(idx, (2, latents, 24))
    assert latent_frames(frames, 8) == latents and decoded_frames(latents, 2) == frames


def test_reference_window_layout_for_49_frames():
    x = jnp.arange(49)[None, :, None, None] * jnp.ones((1, 49, 24, 3))
    first, rest = split_windows(x, 8)
    chex.assert_shape(first, (1, 9, 24, 3))
    chex.assert_shape(rest, (5, 8, 24, 3))
    np.testing.assert_array_equal(rest[:, 0, 0, 0], [9, 17, 25, 33, 41])
    np.testing.assert_array_equal(merge_windows(first, rest, 1), x)
    # 13 latent frames decode in windows of 3, 2, 2, 2, 2, 2.
    first, rest = split_windows(jnp.zeros((1, 13, 24, 4)), 2)
    assert first.shape[1] == 3 and rest.shape[:2] == (5, 2)
    with pytest.raises(ValueError, match="fewer than one window"):
        latent_frames(7, 8)


def test_windowed_encoding_equals_each_window_alone(tiny):
    model, variables = tiny
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 33, 24, 3))
    z = model.apply(variables, x, method=FourDMoT.encode)
    encode_one = lambda w: model.apply(variables, w, method=lambda m, w: m.encoder(w))
    bounds = [(0, 9), (9, 17), (17, 25), (25, 33)]
    parts = [encode_one(x[:, a:b]) for a, b in bounds]
    chex.assert_trees_all_close(z, jnp.concatenate(parts, axis=1), atol=1e-5, rtol=1e-5)
    assert [p.shape[1] for p in parts] == [3, 2, 2, 2]
    recon = model.apply(variables, z, method=FourDMoT.decode)
    decode_one = lambda w: model.apply(variables, w, method=lambda m, w: m.decoder(w))
    latent_bounds = [(0, 3), (3, 5), (5, 7), (7, 9)]
    expected = jnp.concatenate([decode_one(z[:, a:b]) for a, b in latent_bounds], axis=1)
    chex.assert_trees_all_close(recon, expected, atol=1e-5, rtol=1e-5)


def test_pooling_keeps_the_first_frame_of_odd_windows():
    x = jnp.arange(9.0)[None, :, None, None]
    np.testing.assert_allclose(temporal_avg_pool2(x)[0, :, 0, 0], [0, 1.5, 3.5, 5.5, 7.5])
    np.testing.assert_allclose(temporal_avg_pool2(x[:, 1:])[0, :, 0, 0], [1.5, 3.5, 5.5, 7.5])


def test_upsampling_keeps_the_first_frame_and_aligns_corners():
    x = jnp.array([10.0, 0.0, 3.0])[None, :, None, None]
    # Odd: frame 0 kept, [0, 3] → 4 frames on aligned corners: 0, 1, 2, 3.
    np.testing.assert_allclose(temporal_upsample2(x)[0, :, 0, 0], [10, 0, 1, 2, 3], atol=1e-6)
    # Even: all frames upsampled.
    np.testing.assert_allclose(temporal_upsample2(x[:, 1:])[0, :, 0, 0], [0, 1, 2, 3], atol=1e-6)
    # A single frame is odd but not above 1: it is doubled.
    np.testing.assert_allclose(temporal_upsample2(x[:, :1])[0, :, 0, 0], [10, 10])


def test_upsampling_matches_torch_bilinear_align_corners():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 5, 24, 4)).astype(np.float32)
    body = torch.from_numpy(x[:, 1:]).permute(0, 3, 1, 2)       # NCHW, H = frames
    up = torch.nn.functional.interpolate(body, scale_factor=(2, 1), mode="bilinear",
                                         align_corners=True).permute(0, 2, 3, 1).numpy()
    expected = np.concatenate([x[:, :1], up], axis=1)
    np.testing.assert_allclose(temporal_upsample2(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-6)


def test_resblock_dilation_rule():
    assert resblock_dilation(128) == 3 and resblock_dilation(512) == 1
    assert resblock_dilation(32, reference_width=128) == 3
