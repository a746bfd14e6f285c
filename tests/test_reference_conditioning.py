"""Reference conditioning shared by `mtvjax animate` and the training-data build, on tiny random
checkpoint sets (CPU): the VAE posteriors (CogVideoX in the scaled latent space, Wan in the
normalised one) and `reference_latents` / `image_condition` / `clip_features`, checked against
the raw VAE outputs and against what the animators' `prepare` returns.

Geometry: 16 × 16 pixels; the 7B's 5-frame video is one encoder chunk, the 17B's 9-frame video
is the first and the steady-state chunk, so few programs compile."""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from animate_helpers import WINDOW, _config
from mtvjax.models.encoders import clip_vision
from mtvjax.models.encoders.image_preprocess import clip_preprocess
from mtvjax.models.mvdit.cogvideox.reference import reference_latents
from mtvjax.models.mvdit.wan.reference import MASK_CHANNELS, clip_features, image_condition
from mtvjax.models.vae.cogvideox import model as vc
from mtvjax.models.vae.wan import model as vae_wan
from mtvjax.sample.animator_cogvideox import CogVideoXAnimator
from mtvjax.sample.animator_wan import WanAnimator
from mtvjax.tools import random_checkpoints

ISA = {"conditioning": "isa"}        # no 4DMoT in the sets: conditioning does not need one


def close(ours, ref, tol: float = 1e-5):
    """Equal up to `tol` of the reference's magnitude (survives another instruction set)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=tol * max(np.abs(ref).max(), 1e-3))


def images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def animator7b(tmp_path_factory):
    paths = random_checkpoints.write_set(str(tmp_path_factory.mktemp("tiny7b")), "cogvideox",
                                         WINDOW, model_fields=ISA)
    return CogVideoXAnimator(_config("7b", paths), progress=False)


@pytest.fixture(scope="module")
def animator17b(tmp_path_factory):
    paths = random_checkpoints.write_set(str(tmp_path_factory.mktemp("tiny17b")), "wan", WINDOW,
                                         text_encoder=False, model_fields=ISA)
    config = _config("17b", paths, prompt_embeddings=paths["prompt_embeddings"])
    config.checkpoints.text_encoder = ""
    return WanAnimator(config, progress=False)


def test_cogvideox_posterior_is_scaled_and_sampled_by_encode(animator7b):
    """mean (μ − shift)·sf and log-variance clip(log σ²) + 2·log sf, from the raw moments; `encode`
    is its mean, and with a key its sample mean + exp(logvar / 2)·ε."""
    params = animator7b.vae_params
    vae = vc.CogVideoXVAE(dict(animator7b.vae.config, shift_factor=0.25))   # shift shows
    sf = vae.config.scaling_factor
    video = images(0, 5)[None]
    raw_mean, raw_logvar = np.split(np.asarray(vae.encode_moments(params, video)), 2, axis=-1)
    mean, logvar = vae.encode_posterior(params, video)
    assert mean.shape == logvar.shape == (1, 2, 2, 2, vae.config.latent_channels)
    close(mean, (raw_mean - 0.25) * sf)
    close(logvar, np.clip(raw_logvar, -30, 20) + 2 * math.log(sf))
    close(vae.encode(params, video), mean)
    key = jax.random.key(7)
    eps = np.asarray(jax.random.normal(key, mean.shape))
    sample = vae.encode(params, video, key=key)
    close(sample, np.asarray(mean) + np.exp(np.asarray(logvar) / 2) * eps)
    close(sample, (raw_mean + np.exp(raw_logvar / 2) * eps - 0.25) * sf)
    # unscaled: the raw posterior; the module-level function is the method
    close(vae.encode(params, video, key=key, scale=False), raw_mean + np.exp(raw_logvar / 2) * eps)
    close(vc.encode_posterior(params, video, dict(vae.config))[1], logvar)


def test_reference_latents_are_the_7b_animators(animator7b):
    """The reference repeated over the frames, an unscaled posterior sample with the key — the
    `ref_latents` the animator builds."""
    vae, params = animator7b.vae, animator7b.vae_params
    reference, key = images(1, 1)[0], jax.random.key(3)
    ref = reference_latents(vae, params, reference, 5, key)
    video = np.broadcast_to(reference, (1, 5) + reference.shape)
    mean, logvar = vae.encode_posterior(params, video)
    eps = np.asarray(jax.random.normal(key, mean.shape))
    sf = vae.config.scaling_factor
    close(ref, (np.asarray(mean) + np.exp(np.asarray(logvar) / 2) * eps) / sf)
    close(animator7b.prepare(reference, 5, key)["ref_latents"], ref)
    assert not np.allclose(reference_latents(vae, params, reference, 5, jax.random.key(4)), ref)


def test_wan_posterior_is_normalised_and_its_mean_is_encode(animator17b):
    config, params = animator17b.vae_config, animator17b.vae_params
    video = images(2, 9)[None]
    mean, logvar = vae_wan.encode_posterior(params, video, config)
    assert mean.shape == logvar.shape == (1, 3, 2, 2, config.z_dim)
    assert np.isfinite(np.asarray(logvar)).all()
    close(vae_wan.encode(params, video, config), mean)
    # against the raw encoder output (latents mean 0, std 1), on the first (causal) latent frame
    raw = vae_wan.wan_vae_config(config, latents_mean=[0.0] * config.z_dim,
                                 latents_std=[1.0] * config.z_dim)
    raw_mean, raw_logvar = vae_wan.encode_posterior(params, video[:, :1], raw)
    m, s = np.asarray(config.latents_mean), np.asarray(config.latents_std)
    close(mean[:, :1], (np.asarray(raw_mean) - m) / s)
    close(logvar[:, :1], np.asarray(raw_logvar) - 2 * np.log(s))


def test_image_condition_and_clip_features_are_the_17b_animators(animator17b):
    vae_config, vae_params = animator17b.vae_config, animator17b.vae_params
    known = images(3, 5)
    reference = known[0]
    # the reference alone: mask 1 on latent frame 0, the rest of the video 0
    y, count = image_condition(vae_params, vae_config, reference[None], 9)
    assert count == 1 and y.shape == (1, 3, 2, 2, MASK_CHANNELS + vae_config.z_dim)
    mask = np.asarray(y[..., :MASK_CHANNELS])
    assert (mask[:, 0] == 1).all() and (mask[:, 1:] == 0).all()
    video = np.zeros((1, 9, 16, 16, 3), np.float32)
    video[0, 0] = reference
    close(y[..., MASK_CHANNELS:], vae_wan.encode(vae_params, video, vae_config))
    # a long video's previous frames: 5 frames = 2 known latent frames
    y5, count5 = image_condition(vae_params, vae_config, known, 9)
    assert count5 == 2
    mask5 = np.asarray(y5[..., :MASK_CHANNELS])
    assert (mask5[:, :2] == 1).all() and (mask5[:, 2:] == 0).all()
    video[0, :5] = known
    close(y5[..., MASK_CHANNELS:], vae_wan.encode(vae_params, video, vae_config))

    clip_config = animator17b.clip_config
    image = clip_features(animator17b.clip_params, clip_config, reference)
    pixels = clip_preprocess(reference[None], clip_config.image_size)
    close(image, clip_vision.encode_images(animator17b.clip_params, pixels, clip_config))
    assert image.shape[0] == 1 and image.shape[-1] == random_checkpoints.TINY_IMAGE_DIM

    cond = animator17b.prepare(reference, 9, jax.random.key(0))
    close(cond["y"], y)
    close(cond["image"], image)
