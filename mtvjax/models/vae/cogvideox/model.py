"""The CogVideoX video VAE (diffusers' `AutoencoderKLCogVideoX`) in Flax, channel-last.

    vae = CogVideoXVAE(get_config("cogvideox-5b"))
    latents = vae.encode(params, video)   # [B, T, H, W, 3] in [-1, 1] → [B, t, H/8, W/8, 16]
    video = vae.decode(params, latents)   # → [B, 4(t − 1) + 1, H, W, 3];  t = (T − 1)/4 + 1

(or the functions `encode(params, video, config)` / `decode(params, latents, config)`;
`encode_posterior` gives (mean, log-variance)).

Architecture (layers in `vae_layers.py`): the encoder is a causal conv_in, one down block per
`block_out_channels` entry (`layers_per_block` ResNet blocks with GroupNorm, then — all but the
last block — a stride-2 downsample that also halves time in the first log2(temporal ratio)
blocks), a 2-ResNet mid block, GroupNorm, SiLU and a causal conv_out giving mean ‖ log-variance
(2 × latent channels). The decoder mirrors it with `layers_per_block + 1` ResNets per up block,
SpatialNorm3D (GroupNorm modulated by the chunk's latents) everywhere, and nearest ×2 upsampling.
There is no quant / post-quant conv.

Frame batching (as diffusers): the encoder sees the video in chunks of `frame_batch_size` (8)
frames, the first chunk taking the `T mod 8` extra frames (a 49-frame video: 9, 8, 8, 8, 8, 8 →
3 + 5·2 = 13 latent frames); the decoder sees `latent_frame_batch_size` (2) latent frames at a
time (13: 3, 2, 2, 2, 2, 2 → 9 + 5·8 = 49 frames). The causal convs carry their conv cache from
chunk to chunk; GroupNorm statistics, temporal resampling and the SpatialNorm latents are per
chunk. One jitted function per chunk shape (the first chunk and the later ones), looped on the
host.

Spatial tiling (`tiling=True` or a dict of the `tile_*` fields): frames larger than
`tile_sample_min_{height,width}` (default half of `sample_{height,width}`) are cut into
overlapping tiles that are encoded (decoded) on their own, frame-batched, and blended linearly
over `overlap_factor` of a tile with the tile above and to the left (already blended), in raster
order, as diffusers' `tiled_encode` / `tiled_decode`.

Latents are scaled as the pipelines do: `encode` returns `(z − shift) · scaling_factor` and
`decode` inverts that first (`scale=False` skips both: MTVCrafter's reference latents are
unscaled samples, docs/reference/mvdit7b.md §6). `encode_posterior` gives the posterior's mean
and log-variance (clipped to [−30, 20]) in the same space, the log-variance shifted by
2·log(scaling_factor); `encode(key=...)` samples it, `mean + exp(logvar / 2) · ε`; without a key
it is the mean.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from mtvjax.models.vae.cogvideox.layers import (CausalConv3d, Downsample, GroupNorm, PointwiseConv3d,
                                      SpatialNorm3D, Upsample, frame_chunks, silu, tiled_apply)

PRECISIONS = {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH,
              "default": lax.Precision.DEFAULT}
TILE_FIELDS = ("tile_sample_min_height", "tile_sample_min_width", "tile_overlap_factor_height",
               "tile_overlap_factor_width")


def cogvideox_vae_presets() -> dict[str, dict]:
    """VAE fields per variant. `cogvideox-5b` is THUDM/CogVideoX-5b's `vae/config.json` (the
    diffusers defaults except scaling_factor 0.7); `cogvideox-2b` keeps the default 1.15258426."""
    base = dict(in_channels=3, out_channels=3, latent_channels=16,
                block_out_channels=(128, 256, 256, 512), layers_per_block=3,
                norm_num_groups=32, norm_eps=1e-6, act_fn="silu", temporal_compression_ratio=4,
                scaling_factor=0.7, shift_factor=0.0, sample_height=480, sample_width=720,
                tile_overlap_factor_height=1 / 6, tile_overlap_factor_width=1 / 5,
                frame_batch_size=8, latent_frame_batch_size=2,
                use_quant_conv=False, use_post_quant_conv=False,
                dtype="float32", precision="highest")
    tiny = dict(base, block_out_channels=(8, 16, 16, 32), layers_per_block=1, norm_num_groups=4,
                sample_height=64, sample_width=64, tile_overlap_factor_height=1 / 4,
                tile_overlap_factor_width=1 / 4)
    return {"cogvideox-5b": base, "cogvideox-2b": dict(base, scaling_factor=1.15258426),
            "tiny": tiny}


def get_config(variant: str = "cogvideox-5b", **overrides) -> ml_collections.ConfigDict:
    presets = cogvideox_vae_presets()
    if variant not in presets:
        raise ValueError(f"unknown CogVideoX VAE variant {variant!r}; expected {sorted(presets)}")
    fields = dict(presets[variant])
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown CogVideoX VAE fields: {unknown}")
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


# ----------------------------------------------------------------------------------------------
# Modules (caches are nested dicts named like the parameters; `None` before the first chunk)
# ----------------------------------------------------------------------------------------------


def _norm(name: str, h, zq, groups: int, eps: float, precision):
    """SpatialNorm3D on the latents `zq` (the decoder's norms; eps 1e-6 as diffusers), or
    GroupNorm with `eps` when `zq` is None (the encoder's)."""
    if zq is not None:
        return SpatialNorm3D(groups, 1e-6, precision, name=name)(h, zq)
    return GroupNorm(groups, eps, name=name)(h)


class ResnetBlock3D(nn.Module):
    out_channels: int
    groups: int
    eps: float = 1e-6
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x, zq=None, cache=None):
        cache, new = cache or {}, {}
        h = silu(_norm("norm1", x, zq, self.groups, self.eps, self.precision))
        h, new["conv1"] = CausalConv3d(self.out_channels, 3, self.precision,
                                       name="conv1")(h, cache.get("conv1"))
        h = silu(_norm("norm2", h, zq, self.groups, self.eps, self.precision))
        h, new["conv2"] = CausalConv3d(self.out_channels, 3, self.precision,
                                       name="conv2")(h, cache.get("conv2"))
        if x.shape[-1] != self.out_channels:
            x = PointwiseConv3d(self.out_channels, self.precision, name="conv_shortcut")(x)
        return x + h, new


class Block3D(nn.Module):
    """`num_layers` ResNets, then an optional `resample` ("down" / "up") layer."""

    out_channels: int
    num_layers: int
    groups: int
    eps: float = 1e-6
    resample: str | None = None
    compress_time: bool = False
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, h, zq=None, cache=None):
        cache, new = cache or {}, {}
        for j in range(self.num_layers):
            h, new[f"resnets_{j}"] = ResnetBlock3D(
                self.out_channels, self.groups, self.eps, self.precision,
                name=f"resnets_{j}")(h, zq, cache.get(f"resnets_{j}"))
        if self.resample == "down":
            h = Downsample(self.out_channels, self.compress_time, self.precision,
                           name="downsamplers_0")(h)
        elif self.resample == "up":
            h = Upsample(self.out_channels, self.compress_time, self.precision,
                         name="upsamplers_0")(h)
        return h, new


class Coder3D(nn.Module):
    """The encoder / decoder shape: a causal conv_in to `widths()[0]`, the `blocks()` in order,
    norm_out, SiLU and a causal conv_out to `out_features`. The decoder's norms are SpatialNorm3D
    on its input latents (`SPATIAL_NORM`)."""

    block_out_channels: tuple
    layers_per_block: int
    out_features: int
    groups: int
    eps: float = 1e-6
    temporal_levels: int = 2
    precision: Any = lax.Precision.HIGHEST
    SPATIAL_NORM = False

    def widths(self) -> tuple:
        raise NotImplementedError

    def blocks(self) -> list:
        raise NotImplementedError

    def _block(self, name: str, width: int, num_layers: int, resample=None, compress=False):
        return Block3D(width, num_layers, self.groups, self.eps, resample, compress,
                       self.precision, name=name)

    @nn.compact
    def __call__(self, x, cache=None):
        cache, new = cache or {}, {}
        zq = x if self.SPATIAL_NORM else None
        h, new["conv_in"] = CausalConv3d(self.widths()[0], 3, self.precision,
                                         name="conv_in")(x, cache.get("conv_in"))
        for block in self.blocks():
            h, new[block.name] = block(h, zq, cache.get(block.name))
        h = silu(_norm("norm_out", h, zq, self.groups, 1e-6, self.precision))
        h, new["conv_out"] = CausalConv3d(self.out_features, 3, self.precision,
                                          name="conv_out")(h, cache.get("conv_out"))
        return h, new


class Encoder3D(Coder3D):
    """Down blocks (stride 2 on all but the last; time halved in the first `temporal_levels`),
    then a 2-ResNet mid block; `out_features` = 2 × latent channels (mean ‖ log-variance)."""

    def widths(self) -> tuple:
        return tuple(self.block_out_channels)

    def blocks(self) -> list:
        chans, n = self.widths(), len(self.block_out_channels)
        return [self._block(f"down_blocks_{i}", ch, self.layers_per_block,
                            "down" if i < n - 1 else None, i < self.temporal_levels)
                for i, ch in enumerate(chans)] + [self._block("mid_block", chans[-1], 2)]


class Decoder3D(Coder3D):
    """A 2-ResNet mid block, then up blocks of `layers_per_block + 1` ResNets (×2 on all but the
    last; time doubled in the first `temporal_levels`)."""

    SPATIAL_NORM = True

    def widths(self) -> tuple:
        return tuple(reversed(self.block_out_channels))

    def blocks(self) -> list:
        chans, n = self.widths(), len(self.block_out_channels)
        return [self._block("mid_block", chans[0], 2)] + [
            self._block(f"up_blocks_{i}", ch, self.layers_per_block + 1,
                        "up" if i < n - 1 else None, i < self.temporal_levels)
            for i, ch in enumerate(chans)]


# ----------------------------------------------------------------------------------------------
# Frame-batched, tiled encode / decode
# ----------------------------------------------------------------------------------------------


class CogVideoXVAE:
    """Encoder and decoder of one config; params `{"encoder": ..., "decoder": ...}`."""

    def __init__(self, config, dtype=None, precision=None, compiler_options=None):
        """`dtype` / `precision` override the config's; `compiler_options` go to `jax.jit`
        (e.g. `{"xla_backend_optimization_level": 0}` compiles the tiny config 2× faster)."""
        c = ml_collections.ConfigDict(dict(config))
        if c.use_quant_conv or c.use_post_quant_conv:
            raise NotImplementedError("quant / post-quant convs are not used by CogVideoX")
        if c.act_fn != "silu":
            raise NotImplementedError(f"act_fn {c.act_fn!r}: only silu")
        self.config = c
        self.dtype = jnp.dtype(dtype or c.dtype)
        prec = PRECISIONS[precision or c.precision]
        chans = tuple(c.block_out_channels)
        levels = int(math.log2(c.temporal_compression_ratio))
        self.spatial_ratio = 2 ** (len(chans) - 1)
        self.encoder = Encoder3D(chans, c.layers_per_block, 2 * c.latent_channels,
                                 c.norm_num_groups, c.norm_eps, levels, prec)
        self.decoder = Decoder3D(chans, c.layers_per_block, c.out_channels, c.norm_num_groups,
                                 c.norm_eps, levels, prec)
        # (compiled, traced): compiler options apply to top-level jits only, not under tracing
        self._encode_chunk = self._jits(self.encoder, compiler_options)
        self._decode_chunk = self._jits(self.decoder, compiler_options)
        self._init = jax.jit(self._init_params)

    def _jits(self, module, compiler_options):
        # the incoming conv cache is donated: the new cache (same shapes) reuses its buffers
        fn = functools.partial(self._apply, module)
        return (jax.jit(fn, donate_argnums=2, compiler_options=compiler_options),
                jax.jit(fn))

    def _apply(self, module, params, x, cache):
        params = jax.tree.map(lambda p: p.astype(self.dtype), params)
        return module.apply({"params": params}, x.astype(self.dtype), cache)

    # -- parameters -----------------------------------------------------------------------------

    def init(self, rng) -> dict:
        """Fresh float32 parameters (torch's default conv init, GroupNorm 1 / 0)."""
        return self._init(rng)

    def _init_params(self, rng) -> dict:
        c, s = self.config, self.spatial_ratio
        k1, k2 = jax.random.split(rng)
        video = jnp.zeros((1, 1, s, s, c.in_channels), jnp.float32)
        latents = jnp.zeros((1, 1, 1, 1, c.latent_channels), jnp.float32)
        return {"encoder": self.encoder.init(k1, video)["params"],
                "decoder": self.decoder.init(k2, latents)["params"]}

    def abstract_params(self) -> dict:
        return jax.eval_shape(self._init_params, jax.random.key(0))

    # -- tiling ---------------------------------------------------------------------------------

    def tile_settings(self, tiling) -> dict | None:
        """`None` (no tiling) or the four `tile_*` values (module docstring)."""
        if not tiling:
            return None
        c = self.config
        out = {"tile_sample_min_height": c.sample_height // 2,
               "tile_sample_min_width": c.sample_width // 2,
               "tile_overlap_factor_height": c.tile_overlap_factor_height,
               "tile_overlap_factor_width": c.tile_overlap_factor_width}
        if isinstance(tiling, dict):
            unknown = sorted(set(tiling) - set(TILE_FIELDS))
            if unknown:
                raise ValueError(f"unknown tiling fields {unknown}; expected {TILE_FIELDS}")
            out.update({k: v for k, v in tiling.items() if v})
        return out

    def _tiles(self, tiling, sample: bool):
        """(tile, step, extent, limit) in input/output units of encode (`sample`) or decode."""
        t = self.tile_settings(tiling)
        s_tile = (t["tile_sample_min_height"], t["tile_sample_min_width"])
        l_tile = tuple(int(v / self.spatial_ratio) for v in s_tile)
        factors = (t["tile_overlap_factor_height"], t["tile_overlap_factor_width"])
        src, dst = (s_tile, l_tile) if sample else (l_tile, s_tile)
        step = tuple(int(v * (1 - f)) for v, f in zip(src, factors))
        extent = tuple(int(v * f) for v, f in zip(dst, factors))
        limit = tuple(v - e for v, e in zip(dst, extent))
        return src, step, extent, limit

    # -- encode / decode ------------------------------------------------------------------------

    def _frames(self, chunk_fns, params, x, batch: int):
        chunk_fn = chunk_fns[isinstance(x, jax.core.Tracer)]
        cache, outs = None, []
        for start, end in frame_chunks(x.shape[1], batch):
            y, cache = chunk_fn(params, x[:, start:end], cache)
            outs.append(y)
        return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]

    def _spatial(self, chunk_fns, params, x, batch: int, tiling, sample: bool, ratio: tuple):
        """`ratio` = (output units, input units) per pixel: (1, 8) encoding, (8, 1) decoding."""
        run = functools.partial(self._frames, chunk_fns, params, batch=batch)
        if tiling:
            tile, step, extent, limit = self._tiles(tiling, sample)
            if x.shape[2] > tile[0] or x.shape[3] > tile[1]:
                # each tile keeps `limit` outputs and the next one starts `step` inputs later:
                # both must cover the same pixels, or the tiles land in the wrong place
                if min(step) <= 0 or any(s * ratio[0] != l * ratio[1]
                                         for s, l in zip(step, limit)):
                    raise ValueError(
                        f"tiling {self.tile_settings(tiling)}: tiles start every {step} and keep "
                        f"{limit} (blend {extent}); the overlap must be a whole number of latent "
                        f"pixels")
                out = tiled_apply(run, x, tile, step, extent, limit)
                want = (x.shape[2] * ratio[0] // ratio[1], x.shape[3] * ratio[0] // ratio[1])
                assert out.shape[2:4] == want, (out.shape, want)
                return out
        return run(x)

    def encode_moments(self, params, video, tiling=None):
        """`[B, T, H, W, in]` → mean ‖ log-variance `[B, t, H/s, W/s, 2·latent]` (float32)."""
        s = self.spatial_ratio
        if video.ndim != 5 or video.shape[2] % s or video.shape[3] % s:
            raise ValueError(f"video {video.shape}: expected [B, T, H, W, C], H and W "
                             f"multiples of {s}")
        return self._spatial(self._encode_chunk, params["encoder"], video,
                             self.config.frame_batch_size, tiling, True, (1, s)
                             ).astype(jnp.float32)

    def encode_posterior(self, params, video, tiling=None, scale: bool = True):
        """Video in [−1, 1] → the posterior (mean, log-variance), each `[B, t, h, w, latent]`,
        log-variance clipped to [−30, 20]; in the scaled latent space unless `scale=False`:
        mean (μ − shift) · scaling_factor, log-variance + 2 · log(scaling_factor)."""
        mean, logvar = jnp.split(self.encode_moments(params, video, tiling), 2, axis=-1)
        logvar = jnp.clip(logvar, -30.0, 20.0)
        if scale:
            c = self.config
            mean = (mean - c.shift_factor) * c.scaling_factor
            logvar = logvar + 2.0 * math.log(c.scaling_factor)
        return mean, logvar

    def encode(self, params, video, key=None, tiling=None, scale: bool = True):
        """Video in [−1, 1] → latents: the posterior mean, or with `key` the sample
        `mean + exp(logvar / 2) · ε` of `encode_posterior` (scaled unless `scale=False`)."""
        mean, logvar = self.encode_posterior(params, video, tiling, scale)
        if key is None:
            return mean
        return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)

    def decode(self, params, latents, tiling=None, scale: bool = True):
        """Latents `[B, t, h, w, latent]` → video `[B, 4(t−1)+1, 8h, 8w, out]` (float32)."""
        if scale:
            latents = latents / self.config.scaling_factor + self.config.shift_factor
        return self._spatial(self._decode_chunk, params["decoder"], latents,
                             self.config.latent_frame_batch_size, tiling, False,
                             (self.spatial_ratio, 1)).astype(jnp.float32)


@functools.lru_cache(maxsize=8)
def _cached_vae(config_json: str) -> CogVideoXVAE:
    return CogVideoXVAE(json.loads(config_json))


def vae_for(config=None) -> CogVideoXVAE:
    """A `CogVideoXVAE` per distinct config (a preset name, dict or ConfigDict), reused so its
    jitted chunk functions stay compiled."""
    if config is None or isinstance(config, str):
        config = get_config(config or "cogvideox-5b")
    return _cached_vae(json.dumps(ml_collections.ConfigDict(dict(config)).to_dict(),
                                  sort_keys=True, default=list))


def encode(params, video, config=None, *, key=None, tiling=None, scale: bool = True):
    """`CogVideoXVAE(config).encode` (config: preset name, dict or ConfigDict; default 5b)."""
    return vae_for(config).encode(params, video, key=key, tiling=tiling, scale=scale)


def encode_posterior(params, video, config=None, *, tiling=None, scale: bool = True):
    """`CogVideoXVAE(config).encode_posterior`: (mean, log-variance)."""
    return vae_for(config).encode_posterior(params, video, tiling=tiling, scale=scale)


def decode(params, latents, config=None, *, tiling=None, scale: bool = True):
    """`CogVideoXVAE(config).decode`."""
    return vae_for(config).decode(params, latents, tiling=tiling, scale=scale)
