"""Wan 2.1 video VAE: parity with diffusers' AutoencoderKLWan (test-only oracle) at a tiny random
config in float32, chunked/causal processing, conversion from diffusers and original Wan naming,
errors naming keys, and the full-size layout and shapes (no allocation)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402

from mtvjax.models.vae.wan import convert as C  # noqa: E402
from mtvjax.checkpoint.conversion import ConversionError, check_layout  # noqa: E402
from mtvjax.models.vae.wan import model as V  # noqa: E402

TINY = V.wan_vae_config("tiny")
TOL = 1e-4
B, T, H, W = 2, 9, 16, 24          # 9 frames → 3 latent frames of 2×3
# unoptimised XLA CPU code compiles ~3× faster and runs these tiny shapes as fast
FAST = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def diffusers_vae(config: V.WanVAEConfig, **kw):
    return diffusers.AutoencoderKLWan(
        base_dim=config.base_dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult),
        num_res_blocks=config.num_res_blocks, temperal_downsample=list(config.temperal_downsample),
        latents_mean=list(config.latents_mean), latents_std=list(config.latents_std), **kw)


def _stats(config):
    shape = (1, -1, 1, 1, 1)
    return (torch.tensor(config.latents_mean).view(shape),
            torch.tensor(config.latents_std).view(shape))


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """The diffusers VAE at the tiny config with random RMS gammas and biases (not 1 / 0)."""
    torch.manual_seed(0)
    model = diffusers_vae(TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """A diffusers *pipeline* folder (weights in `vae/`) → Orbax checkpoint → (config, params);
    the config comes from the saved config.json (variant=None)."""
    root = tmp_path_factory.mktemp("wan_vae")
    reference.save_pretrained(root / "pipeline" / "vae")
    summary = C.convert_vae_wan(root / "pipeline", root / "ckpt", variant=None)
    config, params = C.load_converted(root / "ckpt")
    return config, params, summary


@pytest.fixture(scope="module")
def video():
    return np.random.default_rng(0).uniform(-1, 1, (B, T, H, W, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def latents():
    return np.random.default_rng(1).normal(size=(B, 3, H // 8, W // 8, TINY.z_dim)).astype(
        np.float32)


@pytest.fixture(scope="module")
def encoded(converted, video):
    config, params, _ = converted
    return np.asarray(V.encode(params, video, config, compiler_options=FAST))


@pytest.fixture(scope="module")
def decoded(converted, latents):
    config, params, _ = converted
    return np.asarray(V.decode(params, latents, config, compiler_options=FAST))


# ----------------------------------------------------------------------------------------------
# Parity with diffusers
# ----------------------------------------------------------------------------------------------


def test_converted_config(converted):
    config, params, summary = converted
    assert config == TINY
    assert summary["naming"] == "diffusers" and summary["variant"] == "config.json"
    assert summary["params"] == V.count_params(params) == V.count_params(V.param_shapes(TINY))


def test_encode_parity(reference, encoded, video):
    """Normalised posterior mean, (μ − mean) / std, as the Wan pipeline builds it; diffusers
    chunks the same way (frame 0, then 4 frames)."""
    mean, std = _stats(TINY)
    with torch.no_grad():
        mu = reference.encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).latent_dist.mode()
    expected = ((mu - mean) / std).permute(0, 2, 3, 4, 1).numpy()
    assert encoded.shape == (B, 3, H // 8, W // 8, TINY.z_dim) == expected.shape
    assert rel_err(encoded, expected) <= TOL


def test_decode_parity(reference, decoded, latents):
    """z·std + mean, one latent frame at a time in diffusers, clamp to [−1, 1]."""
    mean, std = _stats(TINY)
    with torch.no_grad():
        z = torch.from_numpy(latents).permute(0, 4, 1, 2, 3) * std + mean
        expected = reference.decode(z).sample.permute(0, 2, 3, 4, 1).numpy()
    assert decoded.shape == (B, T, H, W, 3) == expected.shape
    assert np.mean(np.abs(expected) >= 1.0) < 0.05       # the comparison is not all clamp
    assert rel_err(decoded, expected) <= TOL


def test_chunk_sizes_and_causality(converted, video, latents, encoded, decoded):
    """Larger chunks (8 frames / 2 latent frames) give the same result as the released chunking;
    a prefix of the video encodes to a prefix of the latents (and likewise for decoding)."""
    config, params, _ = converted

    def enc(v, **kw):
        return np.asarray(V.encode(params, v, config, compiler_options=FAST, **kw))

    def dec(z, **kw):
        return np.asarray(V.decode(params, z, config, compiler_options=FAST, **kw))

    assert rel_err(enc(video, chunk_latents=2), encoded) <= 1e-5
    assert rel_err(dec(latents, chunk_latents=2), decoded) <= 1e-5
    np.testing.assert_allclose(enc(video[:, :1]), encoded[:, :1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(enc(video[:, :5]), encoded[:, :2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(dec(latents[:, :2]), decoded[:, :5], rtol=0, atol=1e-6)


def test_bfloat16_compute(converted, video, latents, encoded, decoded):
    """Smoke check: dtype bfloat16 (params float32; norms and softmax in float32) tracks float32
    (first chunk of each direction)."""
    config, params, _ = converted
    bf16 = V.wan_vae_config(config, dtype="bfloat16")
    lat = V.encode(params, video[:, :1], bf16, compiler_options=FAST)
    out = V.decode(params, latents[:, :1], bf16, compiler_options=FAST)
    assert lat.dtype == out.dtype == jnp.float32
    assert rel_err(lat, encoded[:, :1]) < 1e-2       # measured 1.5e-3
    assert rel_err(out, decoded[:, :1]) < 1e-1       # measured 3e-2 (max abs over the frame)


def test_input_checks(converted):
    config, params, _ = converted
    with pytest.raises(ValueError, match="1 \\+ 4"):
        V.encode(params, np.zeros((1, 8, 16, 16, 3), np.float32), config)
    with pytest.raises(ValueError, match="multiple of 8"):
        V.encode(params, np.zeros((1, 5, 12, 16, 3), np.float32), config)
    with pytest.raises(ValueError, match="latents must be"):
        V.decode(params, np.zeros((1, 2, 2, 2, 3), np.float32), config)


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def test_original_wan_naming(reference, converted, tmp_path):
    """A `Wan2.1_VAE.pth`-style torch file (original names, with MTVCrafter's `model.` prefix)
    converts to the same params as the diffusers folder."""
    sd = reference.state_dict()
    wan = {f"model.{w}": sd[d].clone() for d, w, _, _ in C.name_rows(TINY)}
    assert len(wan) == len(sd)
    torch.save(wan, tmp_path / "Wan2.1_VAE.pth")
    config, params, report = C.convert_state_dict(tmp_path / "Wan2.1_VAE.pth", variant="tiny")
    assert report["naming"] == "wan" and config == TINY
    flat = traverse_util.flatten_dict(params)
    expected = traverse_util.flatten_dict(converted[1])
    assert flat.keys() == expected.keys()
    for path, value in flat.items():
        np.testing.assert_array_equal(value, expected[path], err_msg="/".join(path))


def test_full_size_layout_and_wan_names():
    """The real config: diffusers' AutoencoderKLWan() (meta tensors, nothing allocated) matches
    the name table and shape rules; the original names are those diffusers' own single-file
    converter maps to the diffusers names."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    config = V.wan_vae_config("wan2.1")
    with torch.device("meta"):
        model = diffusers.AutoencoderKLWan()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    targets = {p: tuple(s.shape) for p, s in
               traverse_util.flatten_dict(V.param_shapes(config)).items()}
    check_layout(shapes, targets, C.name_table(config), C.RULES, "meta")
    assert len(shapes) == len(targets) == 194
    assert V.count_params(V.param_shapes(config)) == sum(
        int(np.prod(s)) for s in shapes.values()) == 126_892_531
    rows = C.name_rows(config)
    renamed = convert_wan_vae_to_diffusers({w: w for _, w, _, _ in rows})
    assert renamed == {d: w for d, w, _, _ in rows}


def test_full_size_shapes():
    """49 frames at 480×832 → 13 latent frames of 60×104×16 and back, by shape evaluation."""
    config = V.wan_vae_config("wan2.1")
    params = V.param_shapes(config)
    video = jax.ShapeDtypeStruct((1, 49, 480, 832, 3), jnp.float32)
    lat = jax.eval_shape(lambda p, v: V.encode(p, v, config), params, video)
    assert lat.shape == (1, 13, 60, 104, 16) and lat.dtype == jnp.float32
    out = jax.eval_shape(lambda p, z: V.decode(p, z, config), params, lat)
    assert out.shape == (1, 49, 480, 832, 3) and out.dtype == jnp.float32


def test_conversion_errors_name_keys(reference, tmp_path):
    sd = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    del sd["decoder.mid_block.attentions.0.proj.bias"]
    sd["encoder.extra.weight"] = torch.zeros(3)
    sd["encoder.down_blocks.0.conv1.weight"] = torch.zeros(8, 8, 3, 3, 1)
    save_file(sd, tmp_path / "vae.safetensors")
    with pytest.raises(ConversionError) as err:
        C.convert_state_dict(tmp_path / "vae.safetensors", variant="tiny")
    message = str(err.value)
    assert str(tmp_path / "vae.safetensors") in message
    for key in ("decoder.mid_block.attentions.0.proj.bias", "encoder.extra.weight",
                "encoder.down_blocks.0.conv1.weight: shape (8, 8, 3, 3, 1) in file, "
                "expected (8, 8, 3, 3, 3)"):
        assert key in message
    # the folder's config.json disagrees with the requested variant
    folder = tmp_path / "vae"
    reference.save_pretrained(folder)
    with pytest.raises(ConversionError, match="base_dim"):
        C.convert_state_dict(folder, variant="wan2.1")
    with pytest.raises(ConversionError, match="pass variant"):
        C.convert_state_dict(tmp_path / "vae.safetensors", variant=None)
