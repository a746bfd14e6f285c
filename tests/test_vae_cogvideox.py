"""CogVideoX video VAE: parity with diffusers' AutoencoderKLCogVideoX (test-only oracle) at a tiny
random config in float32 — frame-batched encode / decode with the conv cache, and spatial tiling
against diffusers' own tiled path — conversion from a diffusers folder (and its errors), and
encode / decode shapes for 9, 17 and 49 frames (49 × 512 × 512 at the real size by eval_shape).

Geometry is chosen so that only six chunk programs compile: encode 9 / 8 frames of 32 × 24 and
a 8 × 24 tile; decode 3 / 2 latent frames of 3 × 4 and a 3 × 1 tile."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.torch import save_file

from mtvjax.models.vae.cogvideox import convert as conv
from mtvjax.checkpoint.conversion import ConversionError, check_layout
from mtvjax.models.vae.cogvideox import model as vc
from mtvjax.models.vae.cogvideox.layers import frame_chunks

RTOL = 1e-4                         # max |ours − diffusers| / max |diffusers|
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def to_torch(x: np.ndarray) -> torch.Tensor:       # [B, T, H, W, C] → [B, C, T, H, W]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 4, 1, 2, 3)


def from_torch(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 4, 1).numpy()


def diffusers_vae(config, seed: int = 0):
    from diffusers import AutoencoderKLCogVideoX
    torch.manual_seed(seed)
    model = AutoencoderKLCogVideoX(
        in_channels=config.in_channels, out_channels=config.out_channels,
        down_block_types=("CogVideoXDownBlock3D",) * len(config.block_out_channels),
        up_block_types=("CogVideoXUpBlock3D",) * len(config.block_out_channels),
        block_out_channels=tuple(config.block_out_channels),
        latent_channels=config.latent_channels, layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups, scaling_factor=config.scaling_factor,
        sample_height=config.sample_height, sample_width=config.sample_width)
    with torch.no_grad():        # GroupNorm affine away from 1 / 0: a swapped scale/bias shows
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm1" in name or "norm2" in name or "norm_out" in name
                                or "norm_layer" in name) and ".conv" not in name:
                p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight")
                        else 0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(diffusers model, VAE, params converted through a diffusers folder and Orbax, summary)."""
    config = vc.get_config("tiny")
    model = diffusers_vae(config)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    model.save_pretrained(folder)
    dst = tmp_path_factory.mktemp("ckpt") / "vae_ckpt"
    summary = conv.convert_vae_cogvideox(folder, dst, variant="tiny")
    restored_config, vae, params = conv.restore_vae_cogvideox(
        dst, compiler_options=FAST_COMPILE)
    return dict(model=model, vae=vae, params=params, summary=summary, folder=folder,
                config=restored_config)


def test_frame_chunks_follow_diffusers():
    assert frame_chunks(49, 8) == [(0, 9), (9, 17), (17, 25), (25, 33), (33, 41), (41, 49)]
    assert frame_chunks(13, 2) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
    assert frame_chunks(1, 8) == [(0, 1)] and frame_chunks(5, 8) == [(0, 5)]
    assert frame_chunks(16, 8) == [(0, 8), (8, 16)]


def test_conversion_from_diffusers_folder(setup):
    model, params, summary = setup["model"], setup["params"], setup["summary"]
    state = model.state_dict()
    assert summary["tensors"] == len(state) and summary["variant"] == "tiny"
    assert summary["params"] == sum(v.numel() for v in state.values())
    assert setup["config"].vae.scaling_factor == pytest.approx(0.7)
    flat = traverse_util.flatten_dict(params)
    np.testing.assert_array_equal(
        flat[("encoder", "down_blocks_1", "resnets_0", "conv1", "kernel")],
        state["encoder.down_blocks.1.resnets.0.conv1.conv.weight"].numpy().transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(
        flat[("decoder", "up_blocks_0", "upsamplers_0", "kernel")],
        state["decoder.up_blocks.0.upsamplers.0.conv.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat[("decoder", "norm_out", "norm_layer", "scale")],
                                  state["decoder.norm_out.norm_layer.weight"].numpy())
    # variant None takes the folder's config.json
    config, _, _ = conv.load_params(setup["folder"], variant=None)
    assert config.variant == "config.json"
    for field in ("block_out_channels", "layers_per_block", "norm_num_groups", "latent_channels",
                  "scaling_factor", "sample_height"):
        assert tuple(np.atleast_1d(config.vae[field])) == tuple(
            np.atleast_1d(setup["config"].vae[field])), field


def test_encode_parity_frame_batched(setup):
    """17 frames → chunks of 9 and 8 frames (conv cache carried) → 5 latent frames."""
    model, vae, params = setup["model"], setup["vae"], setup["params"]
    video = np.random.default_rng(0).uniform(-1, 1, (1, 17, 32, 24, 3)).astype(np.float32)
    with torch.no_grad():
        posterior = model.encode(to_torch(video)).latent_dist
    mean_ref, logvar_ref = from_torch(posterior.mean), from_torch(posterior.logvar)
    moments = vae.encode_moments(params, jnp.asarray(video))
    mean, logvar = np.split(np.asarray(moments), 2, axis=-1)
    assert mean.shape == (1, 5, 4, 3, 16)
    assert rel_err(mean, mean_ref) <= RTOL and rel_err(logvar, logvar_ref) <= RTOL
    scaled = vae.encode(params, jnp.asarray(video))
    np.testing.assert_allclose(scaled, mean * 0.7, rtol=1e-6, atol=1e-7)
    # a posterior sample: mean + exp(logvar / 2) · ε(key)
    key = jax.random.key(3)
    sample = vae.encode(params, jnp.asarray(video), key=key, scale=False)
    eps = jax.random.normal(key, mean.shape, jnp.float32)
    np.testing.assert_allclose(sample, mean + np.exp(0.5 * logvar) * np.asarray(eps),
                               rtol=1e-5, atol=1e-6)


def test_decode_parity_frame_batched(setup):
    """5 latent frames → chunks of 3 and 2 (conv cache carried) → 9 + 8 = 17 frames."""
    model, vae, params = setup["model"], setup["vae"], setup["params"]
    z = np.random.default_rng(1).normal(size=(1, 5, 3, 4, 16)).astype(np.float32)
    with torch.no_grad():
        ref = from_torch(model.decode(to_torch(z)).sample)
    ours = vae.decode(params, jnp.asarray(z), scale=False)
    assert ours.shape == (1, 17, 24, 32, 3)
    assert rel_err(ours, ref) <= RTOL
    # the scaled entry point divides by scaling_factor first
    np.testing.assert_allclose(vae.decode(params, jnp.asarray(z * 0.7)), ours, rtol=1e-5,
                               atol=1e-5)


def test_tiled_encode_parity(setup):
    """56 × 24 frames, 32-pixel tiles every 24 rows (heights 32, 32, 8): diffusers' tiled_encode
    with the same tiles, blended over one latent row."""
    model, vae, params = setup["model"], setup["vae"], setup["params"]
    video = np.random.default_rng(2).uniform(-1, 1, (1, 9, 56, 24, 3)).astype(np.float32)
    model.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32,
                        tile_overlap_factor_height=0.25, tile_overlap_factor_width=0.25)
    try:
        with torch.no_grad():
            ref = from_torch(model.encode(to_torch(video)).latent_dist.mean)
    finally:
        model.disable_tiling()
    ours = vae.encode(params, jnp.asarray(video), tiling=True, scale=False)
    assert ours.shape == (1, 3, 7, 3, 16)
    assert rel_err(ours, ref) <= RTOL


def test_tiled_decode_parity(setup):
    """3 × 7 latents, 4-latent tiles every 3 columns (widths 4, 4, 1): diffusers' tiled_decode,
    blended over 8 pixel columns."""
    model, vae, params = setup["model"], setup["vae"], setup["params"]
    z = np.random.default_rng(3).normal(size=(1, 3, 3, 7, 16)).astype(np.float32)
    model.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32,
                        tile_overlap_factor_height=0.25, tile_overlap_factor_width=0.25)
    try:
        with torch.no_grad():
            ref = from_torch(model.decode(to_torch(z)).sample)
    finally:
        model.disable_tiling()
    ours = vae.decode(params, jnp.asarray(z), scale=False,
                      tiling={"tile_sample_min_height": 32, "tile_sample_min_width": 32})
    assert ours.shape == (1, 9, 24, 56, 3)
    assert rel_err(ours, ref) <= RTOL


def test_inconsistent_tiling_is_refused(setup):
    vae, params = setup["vae"], setup["params"]
    video = jax.ShapeDtypeStruct((1, 1, 48, 8, 3), jnp.float32)
    with pytest.raises(ValueError, match="whole number of latent pixels"):
        jax.eval_shape(lambda v: vae.encode(params, v, tiling={"tile_overlap_factor_height": 0.1}),
                       video)


@pytest.mark.parametrize("frames, latent_frames", [(9, 3), (17, 5), (49, 13)])
def test_round_trip_shapes_tiny(setup, frames, latent_frames):
    vae, params = setup["vae"], setup["params"]
    video = jax.ShapeDtypeStruct((2, frames, 16, 24, 3), jnp.float32)
    latents = jax.eval_shape(lambda v: vae.encode(params, v), video)
    assert latents.shape == (2, latent_frames, 2, 3, 16)
    assert jax.eval_shape(lambda z: vae.decode(params, z), latents).shape == video.shape


def test_round_trip_shapes_full_size():
    """cogvideox-5b at 49 × 512 × 512 (frame-batched; tiling is shape-neutral, see the tiled
    parity tests): shapes only, no allocation. The
    name table covers diffusers' full-size model (built on the meta device) exactly."""
    from diffusers import AutoencoderKLCogVideoX
    config = vc.get_config("cogvideox-5b")
    vae = vc.CogVideoXVAE(config)
    params = vae.abstract_params()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoencoderKLCogVideoX().state_dict().items()}
    check_layout(shapes, conv.target_shapes(vae), conv.name_table(config), conv.RULES, "meta")
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert (n, len(shapes)) == (215_583_907, 436)
    video = jax.ShapeDtypeStruct((1, 49, 512, 512, 3), jnp.float32)
    latents = jax.eval_shape(vae.encode, params, video)
    assert latents.shape == (1, 13, 64, 64, 16)
    assert jax.eval_shape(vae.decode, params, latents).shape == video.shape


# ----------------------------------------------------------------------------------------------
# Conversion errors
# ----------------------------------------------------------------------------------------------


def _state(setup) -> dict:
    return {k: v.clone().contiguous() for k, v in setup["model"].state_dict().items()}


def test_conversion_errors_name_keys(setup, tmp_path):
    state = _state(setup)
    del state["decoder.up_blocks.1.resnets.1.norm2.conv_y.conv.bias"]
    state["encoder.extra.weight"] = torch.zeros(3)
    state["encoder.mid_block.resnets.0.conv1.conv.weight"] = torch.zeros(32, 32, 3, 3, 1)
    path = tmp_path / "vae.safetensors"
    save_file(state, str(path))
    with pytest.raises(ConversionError) as err:
        conv.load_params(path, "tiny")
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys: decoder.up_blocks.1.resnets.1.norm2.conv_y.conv.bias" in msg
    assert "unused source keys: encoder.extra.weight" in msg
    assert "encoder.mid_block.resnets.0.conv1.conv.weight: shape (32, 32, 3, 3, 1)" in msg


def test_conversion_config_mismatches(setup, tmp_path):
    # tiny weights against the 5b variant: the sizes read from the tensors disagree
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file(_state(setup), str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ConversionError, match=r"block_out_channels: file \(8, 16, 16, 32\)"):
        conv.load_params(folder, "cogvideox-5b")
    # a config.json that disagrees with the variant names the fields
    with pytest.raises(ConversionError, match=r"config.json disagrees .* norm_num_groups"):
        conv.load_params(setup["folder"], "cogvideox-5b")
    config = json.loads((setup["folder"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"scaling_factor": 1.15258426}))
    with pytest.raises(ConversionError, match="scaling_factor: config.json 1.15258426"):
        conv.load_params(folder, "tiny")
    (folder / "config.json").write_text(json.dumps(config | {"use_quant_conv": True}))
    with pytest.raises(ConversionError, match="quant"):
        conv.load_params(folder, "tiny")


def test_conversion_from_torch_file_and_pipeline_folder(setup, tmp_path):
    state = _state(setup)
    torch.save(state, tmp_path / "vae.pt")
    _, from_pt, _ = conv.load_params(tmp_path / "vae.pt", "tiny")
    pipeline = tmp_path / "pipeline"
    (pipeline / "vae").mkdir(parents=True)
    save_file(state, str(pipeline / "vae" / "diffusion_pytorch_model.safetensors"))
    _, from_pipeline, _ = conv.load_params(pipeline, "tiny")       # a pipeline's vae/ folder
    for a, b, c in zip(jax.tree.leaves(from_pt), jax.tree.leaves(from_pipeline),
                       jax.tree.leaves(setup["params"])):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, np.asarray(c))
    with pytest.raises(FileExistsError):
        conv.convert_vae_cogvideox(tmp_path / "vae.pt", tmp_path, "tiny")
