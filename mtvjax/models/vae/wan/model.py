"""The Wan 2.1 video VAE in Flax linen (the VAE of MV-DiT-17B, docs/reference/mvdit17b.md §6.5).

Channel-last video `[B, T, H, W, C]`, pixels in [−1, 1]. Temporal compression ×4 with the first
frame alone (T = 1 + 4·k frames ↔ 1 + k latent frames), spatial ×8, z_dim 16.

* **Encoder**: causal conv_in → per level `num_res_blocks` residual blocks, then (all but the last
  level) `downsample2d` or `downsample3d` (`temperal_downsample`) → mid block (res, per-frame
  attention, res) → RMS norm, SiLU, causal conv_out to 2·z_dim → `quant_conv` (1×1×1). The
  posterior mean is the first z_dim channels; `encode` returns it normalised per channel,
  (μ − latents_mean) / latents_std, as the Wan pipeline does (there is no scaling_factor);
  `encode_posterior` also gives the log-variance (the last z_dim channels) in that space,
  log σ² − 2·log(latents_std).
* **Decoder**: z·std + mean → `post_quant_conv` → causal conv_in → mid block → per level
  `num_res_blocks + 1` residual blocks (level i > 0 starts from half the previous width) and an
  `upsample3d` / `upsample2d` (to half width) on all but the last → head → clamp to [−1, 1].

**Chunks.** Like the released VAE, `encode` runs frame 0 alone, then chunks of 4 frames (4·n with
`chunk_latents=n`); `decode` runs latent frame 0 alone, then chunks of `chunk_latents` latent
frames (1 released). The causal feature cache (last 2 inputs of every 3-frame conv, the last frame
of each temporal downsampler, see `vae_wan_layers`) is carried between chunks, so any chunk size
gives the same result up to float rounding, and only one chunk's activations are alive at a time.
The first chunk and the steady-state chunk are two jitted functions (plus one more for a shorter
last chunk); the loop over chunks runs on the host, so a numpy `video` is moved to the device one
chunk at a time.

API: `WanVAEConfig`, `wan_vae_presets()` (`wan2.1`, `tiny`), `wan_vae_config(variant, **over)`,
`config_from_diffusers(dict)`; `WanVAE` (Flax module: `encode_chunk`, `decode_chunk`);
`encode(params, video, config)`, `encode_posterior` (mean, log-variance),
`decode(params, latents, config)`; `param_shapes`, `init_params`, `count_params`. Conversion from diffusers / original Wan weights:
`mtvjax.models.vae.wan.convert`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from mtvjax.models.layers.config_fields import checked_config, config_from_variant
from mtvjax.models.layers.dtypes import DTYPES, check_dtype_fields, check_precision_field
from mtvjax.models.layers.param_tree import abstract_params
from mtvjax.models.layers.param_tree import count_params  # noqa: F401 (part of this module's API)
from mtvjax.models.vae.wan.layers import (CausalConv3d, MidBlock, Resample, ResidualBlock,
                                          RMSNorm, UpBlock, run_cached)

FAMILY = "wan_vae"

WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Fields of the Wan 2.1 VAE (defaults = the released Wan2.1_VAE / diffusers defaults)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None     # None: base_dim
    z_dim: int = 16
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple = (False, True, True)   # diffusers' spelling
    latents_mean: tuple = WAN21_LATENTS_MEAN
    latents_std: tuple = WAN21_LATENTS_STD
    in_channels: int = 3
    out_channels: int = 3
    dtype: str = "float32"
    param_dtype: str = "float32"
    precision: str | None = None             # conv/matmul precision ("highest": strict f32 on GPU)

    def __post_init__(self):
        for name in ("dim_mult", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
        object.__setattr__(self, "temperal_downsample",
                           tuple(bool(t) for t in self.temperal_downsample))
        object.__setattr__(self, "latents_mean", tuple(float(m) for m in self.latents_mean))
        object.__setattr__(self, "latents_std", tuple(float(s) for s in self.latents_std))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temperal_downsample has {len(self.temperal_downsample)} entries; "
                             f"dim_mult {self.dim_mult} needs {len(self.dim_mult) - 1}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean / latents_std need z_dim = {self.z_dim} entries, got "
                             f"{len(self.latents_mean)} / {len(self.latents_std)}")
        if min(self.latents_std) <= 0:
            raise ValueError("latents_std must be positive")
        if (self.base_dim % 2 or self.decoder_dim % 2 or self.num_res_blocks < 1
                or self.z_dim < 1):
            raise ValueError("need even base widths, num_res_blocks >= 1 and z_dim >= 1")
        check_dtype_fields(self)
        check_precision_field(self)

    @property
    def decoder_dim(self) -> int:
        return self.decoder_base_dim or self.base_dim

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    def layer_kwargs(self) -> dict:
        return dict(dtype=DTYPES[self.dtype], param_dtype=DTYPES[self.param_dtype],
                    precision=self.precision)

    def encoder_layers(self) -> list[tuple]:
        """(name, kind, in, out, mode): `down_blocks_k` in the released flat order, kind
        "res" or "resample" (mode downsample2d / downsample3d)."""
        dims = [self.base_dim * m for m in (1,) + self.dim_mult]
        layers = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(self.num_res_blocks):
                layers.append((f"down_blocks_{len(layers)}", "res", cin, cout, None))
                cin = cout
            if i != len(self.dim_mult) - 1:
                mode = "downsample3d" if self.temperal_downsample[i] else "downsample2d"
                layers.append((f"down_blocks_{len(layers)}", "resample", cout, cout, mode))
        return layers

    def decoder_levels(self) -> list[tuple]:
        """(name, in, out, residual blocks, upsample mode or None) per `up_blocks_i`."""
        dims = [self.decoder_dim * m for m in (self.dim_mult[-1],) + self.dim_mult[::-1]]
        upsample = self.temperal_downsample[::-1]
        levels = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            cin = cin // 2 if i > 0 else cin
            mode = None
            if i != len(self.dim_mult) - 1:
                mode = "upsample3d" if upsample[i] else "upsample2d"
            levels.append((f"up_blocks_{i}", cin, cout, self.num_res_blocks + 1, mode))
        return levels

    def to_fields(self) -> dict:
        fields = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    @classmethod
    def from_fields(cls, fields) -> "WanVAEConfig":
        return checked_config(cls, fields, FAMILY, "Wan VAE")


def wan_vae_presets() -> dict[str, dict]:
    """Model fields: ``wan2.1`` (the released Wan2.1_VAE: base 96, dim_mult 1,2,4,4, 2 residual
    blocks, z_dim 16, temporal downsampling False,True,True, Wan 2.1 latent mean/std;
    126,892,531 parameters) and ``tiny`` (base 8, z_dim 4, 1 residual block, same structure)."""
    released = {"family": FAMILY, **WanVAEConfig().to_fields()}
    tiny = dict(released, base_dim=8, z_dim=4, num_res_blocks=1,
                latents_mean=list(WAN21_LATENTS_MEAN[:4]), latents_std=list(WAN21_LATENTS_STD[:4]))
    return {"wan2.1": released, "tiny": tiny}


def wan_vae_config(variant: str | Mapping | WanVAEConfig = "wan2.1", **overrides) -> WanVAEConfig:
    """A config from a preset name, a fields mapping or a `WanVAEConfig`, with overrides."""
    return config_from_variant(WanVAEConfig, variant, wan_vae_presets, "Wan VAE", overrides)


DIFFUSERS_FIELDS = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks",
                    "temperal_downsample", "latents_mean", "latents_std", "in_channels",
                    "out_channels")


def config_from_diffusers(config: Mapping, **overrides) -> WanVAEConfig:
    """From a diffusers `AutoencoderKLWan` config.json dict. Wan 2.2 features (`is_residual`,
    `patch_size`) and encoder attention (`attn_scales`) are refused."""
    if config.get("is_residual") or config.get("patch_size") or config.get("attn_scales"):
        raise ValueError("only the Wan 2.1 VAE is supported (is_residual, patch_size and "
                         "attn_scales must be unset)")
    defaults = WanVAEConfig()
    fields = {k: config.get(k, getattr(defaults, k)) for k in DIFFUSERS_FIELDS}
    return WanVAEConfig.from_fields({**fields, **overrides})


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class CausalCoder(nn.Module):
    """The encoder / decoder shape: `body()` (named cached layers, conv_in first) in order, then
    RMS norm, SiLU and the causal conv_out to `out_features`."""

    config: WanVAEConfig

    def body(self, kw: dict) -> list:
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x, cache=None):
        kw = self.config.layer_kwargs()
        x, new = run_cached(self.body(kw), x, cache)
        x = nn.silu(RMSNorm(kw["param_dtype"], name="norm_out")(x))
        x, new["conv_out"] = CausalConv3d(self.out_features, name="conv_out", **kw)(
            x, (cache or {}).get("conv_out"))
        return x, new


class WanEncoder(CausalCoder):
    """conv_in → residual blocks and downsamplers (`encoder_layers`) → mid block → head to
    2·z_dim (mean ‖ log-variance)."""

    def body(self, kw: dict) -> list:
        cfg = self.config
        layers = [CausalConv3d(cfg.base_dim, name="conv_in", **kw)]
        layers += [ResidualBlock(cout, name=name, **kw) if kind == "res"
                   else Resample(mode, cout, name=name, **kw)
                   for name, kind, _, cout, mode in cfg.encoder_layers()]
        return layers + [MidBlock(name="mid_block", **kw)]

    @property
    def out_features(self) -> int:
        return 2 * self.config.z_dim


class WanDecoder(CausalCoder):
    """conv_in → mid block → up blocks (`decoder_levels`) → head to out_channels."""

    def body(self, kw: dict) -> list:
        levels = self.config.decoder_levels()
        return ([CausalConv3d(levels[0][1], name="conv_in", **kw),
                 MidBlock(name="mid_block", **kw)]
                + [UpBlock(cout, num_res, mode, name=name, **kw)
                   for name, _, cout, num_res, mode in levels])

    @property
    def out_features(self) -> int:
        return self.config.out_channels


class WanVAE(nn.Module):
    """`encode_chunk(video_chunk, cache)` → ((normalised posterior mean, log-variance), cache);
    `decode_chunk(latent_chunk, cache)` → (video in [−1, 1] if `clamp`, cache). `cache=None` is
    the first chunk. `__call__` runs both over a first and a second chunk (creates every param)."""

    config: WanVAEConfig

    def setup(self):
        kw = self.config.layer_kwargs()
        z = self.config.z_dim
        self.encoder = WanEncoder(self.config)
        self.quant_conv = CausalConv3d(2 * z, (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(z, (1, 1, 1), **kw)
        self.decoder = WanDecoder(self.config)

    def _stats(self):
        mean = jnp.asarray(self.config.latents_mean, jnp.float32)
        std = jnp.asarray(self.config.latents_std, jnp.float32)
        return mean, std

    def encode_chunk(self, video, cache=None):
        dtype = DTYPES[self.config.dtype]
        h, cache = self.encoder(video.astype(dtype), cache)
        h, _ = self.quant_conv(h)
        mean, std = self._stats()
        mu, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return ((mu - mean) / std, logvar - 2.0 * jnp.log(std)), cache

    def decode_chunk(self, latents, cache=None, clamp: bool = True):
        mean, std = self._stats()
        z = latents.astype(jnp.float32) * std + mean
        z, _ = self.post_quant_conv(z.astype(DTYPES[self.config.dtype]))
        x, cache = self.decoder(z, cache)
        x = x.astype(jnp.float32)
        return (jnp.clip(x, -1.0, 1.0) if clamp else x), cache

    def __call__(self, video, latents):
        tf = self.config.temporal_factor
        _, cache = self.encode_chunk(video[:, :1])
        (mu, _), _ = self.encode_chunk(video[:, 1:1 + tf], cache)
        _, cache = self.decode_chunk(latents[:, :1])
        x, _ = self.decode_chunk(latents[:, 1:2], cache)
        return mu, x


def dummy_inputs(config: WanVAEConfig, batch: int = 1) -> tuple:
    """Smallest inputs that create every parameter: 1 + temporal_factor frames of one latent
    pixel; 2 latent frames of 1×1."""
    s, tf = config.spatial_factor, config.temporal_factor
    return (jnp.zeros((batch, 1 + tf, s, s, config.in_channels), jnp.float32),
            jnp.zeros((batch, 2, 1, 1, config.z_dim), jnp.float32))


def param_shapes(config="wan2.1") -> dict:
    """`params` as ShapeDtypeStructs (no allocation; cached per config)."""
    return abstract_params(WanVAE, wan_vae_config(config), dummy_inputs)


def init_params(config, rng) -> dict:
    """Freshly initialised params, as the modules' initialisers define them (kernels LeCun
    normal, biases 0, RMS gammas 1), built leaf by leaf from `param_shapes` without tracing the
    model. Not a trained VAE."""
    flat = traverse_util.flatten_dict(param_shapes(config))
    keys = jax.random.split(rng, len(flat))
    out = {}
    for key, (path, leaf) in zip(keys, sorted(flat.items())):
        init = {"kernel": nn.initializers.lecun_normal(),
                "gamma": nn.initializers.ones}.get(path[-1], nn.initializers.zeros)
        out[path] = init(key, leaf.shape, leaf.dtype)
    return traverse_util.unflatten_dict(out)


# ----------------------------------------------------------------------------------------------
# Chunked encode / decode
# ----------------------------------------------------------------------------------------------


def chunk_functions(config: WanVAEConfig, clamp: bool = True, compiler_options=None):
    """(encode_chunk, decode_chunk), jitted: `f(params, x, cache) -> (y, cache)` (encoding: y =
    (mean, log-variance)), cache None for the first chunk (a separate compilation). The cache
    argument is donated (its buffers are reused for the new cache): do not use a cache after
    passing it in. `compiler_options`: XLA options for `jax.jit` (e.g.
    {"xla_backend_optimization_level": 0} compiles ~3× faster on CPU, for tests)."""
    options = tuple(sorted((compiler_options or {}).items()))
    return _chunk_functions(wan_vae_config(config), bool(clamp), options)


@functools.lru_cache(maxsize=16)
def _chunk_functions(config: WanVAEConfig, clamp: bool, options: tuple):
    model = WanVAE(config)

    def enc(params, video, cache):
        return model.apply({"params": params}, video, cache, method=WanVAE.encode_chunk)

    def dec(params, latents, cache):
        return model.apply({"params": params}, latents, cache, clamp, method=WanVAE.decode_chunk)

    kw = dict(donate_argnums=2, compiler_options=dict(options) or None)
    return jax.jit(enc, **kw), jax.jit(dec, **kw)


def _check_video(config: WanVAEConfig, shape, what: str, channels: int, frame_step: int):
    if len(shape) != 5 or shape[-1] != channels:
        raise ValueError(f"{what} must be [B, T, H, W, {channels}], got {tuple(shape)}")
    if (shape[1] - 1) % frame_step or shape[1] < 1:
        raise ValueError(f"{what} has {shape[1]} frames; need 1 + {frame_step}·k")


def encode_posterior(params, video, config="wan2.1", *, chunk_latents: int = 1,
                     compiler_options=None) -> tuple:
    """Video `[B, T, H, W, 3]` in [−1, 1] (T = 1 + 4·k; H, W multiples of 8) → the posterior in
    the normalised latent space, (mean, log-variance), each `[B, 1 + k, H/8, W/8, z_dim]`
    float32: mean (μ − latents_mean) / latents_std, log-variance − 2·log(latents_std). Frame 0
    alone, then chunks of 4·`chunk_latents` frames (the released VAE: 4). `compiler_options`:
    see `chunk_functions`."""
    cfg = wan_vae_config(config)
    tf, s = cfg.temporal_factor, cfg.spatial_factor
    _check_video(cfg, video.shape, "video", cfg.in_channels, tf)
    if video.shape[2] % s or video.shape[3] % s:
        raise ValueError(f"video size {video.shape[2:4]} is not a multiple of {s}")
    enc, _ = chunk_functions(cfg, compiler_options=compiler_options)
    out, cache = enc(params, video[:, :1], None)
    outs, step = [out], tf * max(1, int(chunk_latents))
    for start in range(1, video.shape[1], step):
        out, cache = enc(params, video[:, start:start + step], cache)
        outs.append(out)
    return tuple(parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
                 for parts in zip(*outs))


def encode(params, video, config="wan2.1", *, chunk_latents: int = 1, compiler_options=None):
    """Normalised latents `[B, 1 + k, H/8, W/8, z_dim]`: the posterior mean of
    `encode_posterior` (what the Wan pipeline encodes)."""
    return encode_posterior(params, video, config, chunk_latents=chunk_latents,
                            compiler_options=compiler_options)[0]


def decode(params, latents, config="wan2.1", *, chunk_latents: int = 1, clamp: bool = True,
           compiler_options=None):
    """Normalised latents `[B, F, h, w, z_dim]` → video `[B, 1 + 4·(F − 1), 8h, 8w, 3]` in
    [−1, 1] (clamped unless `clamp=False`), float32. Latent frame 0 alone, then chunks of
    `chunk_latents` latent frames (the released VAE: 1)."""
    cfg = wan_vae_config(config)
    _check_video(cfg, latents.shape, "latents", cfg.z_dim, 1)
    _, dec = chunk_functions(cfg, clamp, compiler_options)
    out, cache = dec(params, latents[:, :1], None)
    outs, step = [out], max(1, int(chunk_latents))
    for start in range(1, latents.shape[1], step):
        out, cache = dec(params, latents[:, start:start + step], cache)
        outs.append(out)
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
