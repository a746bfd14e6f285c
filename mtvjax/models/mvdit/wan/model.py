"""MV-DiT-17B: the Wan-2.1-I2V-14B-based motion-aware video DiT, in Flax linen.

Reproduces the released transformer (docs/reference/mvdit17b.md, "17B §" below) in its
official-compatible configuration:

* input `[B, F, H, W, 36]` channels-last = 16 noisy + 4 mask + 16 reference latents (§1), or the
  16 noisy channels plus `y` (20) or `mask` (4) + `ref` (16);
* patch embedding: the (1, 2, 2) Conv3d as a linear map over `[pt, ph, pw, C]` patches (§4.2);
* time: float sinusoid (cos first, §4.3) → time_embedding (Linear, SiLU, Linear) = e →
  time_projection (SiLU, Linear) = e0, the 6-way modulation; both in float32 whatever `dtype`;
* text MLP (GELU-tanh) over `text_len` rows: shorter inputs are zero-padded and NOT masked (§4.4);
  CLIP-image MLPProj (LN, Linear, GELU, Linear, LN);
* blocks (§4.6): modulated self-attention with full-width RMSNorm q/k and Wan 3-D vision RoPE,
  affine-LN text+image cross-attention, in every `motion_every`-th block (0, 4, ..., 36) the
  motion attention (norm4 + motion_attn, heads-major keys, no gate, §2.3), modulated GELU-tanh FFN;
* motion positional encoding: `motion_pe` ("4d" released; "dynamic", "learnable", "time", "xy",
  "xyz", "none") and `motion_query_rope` ("vision" released; "4d" = queries at (t, h, w, 0) in the
  motion bands), as the 7B's; rules in `mtvjax.models.mvdit.motion_pe`;
* head with (modulation + e) shift/scale, unpatchify channel fastest (§4.7, §4.8).

**Motion-token padding (§2.4).** The 3072-wide tokens are zero-padded to the model width once, in
`MVDiTWan.__call__` right before the blocks (as the released forward does); the pad width is
D − motion_dim, which equals the released fixed 2048 at D = 5120.

**Layer layout (scan).** Only every 4th block has motion attention, so blocks are grouped as
[motion block, plain, plain, plain] and the groups are scanned (`nn.scan`, params stacked on a
leading `layers` axis of length G = L // motion_every); inside a group the plain blocks are a
second `nn.scan` (`sublayers` axis, length motion_every − 1). The traced program holds exactly one
motion block and one plain block whatever the depth or group size, so compile time is flat in
depth, and the parameters need no dummy motion weights in plain blocks (an "every block has
motion params, gated off" scheme would waste 30 × 105M parameters at 17B). A remainder of
L % motion_every blocks (e.g. the 5-layer tiny test config: blocks 0–3 + block 4) becomes an
unscanned `tail` group. Params: `blocks/motion_block/...` `[G, ...]`, `blocks/plain/...`
`[G, k−1, ...]`, `tail/motion_block/...`, `tail/plain/...` `[r−1, ...]`; `block_location(i)` maps a
released block index to its slot. `motion_every = 0` gives a plain Wan stack (`blocks/...` `[L,
...]`). Each block is wrapped in `nn.remat` with the configured policy (none / full /
dots_saveable / dots_with_no_batch_dims_saveable).

**dtypes.** Params float32 (`param_dtype`); compute `dtype` float32 (default, parity) or
bfloat16. Norms, RoPE, softmax statistics (kernel-dependent), the time MLP, the modulation
arithmetic and the gated residual updates run in float32 and are cast back to `dtype` (as upstream
Wan / diffusers; the released bf16 run did the modulation and residual sums in bf16, §4 "dtype").

**Unconditional motion tokens.** The released 17B has none (§2.5). `uncond_motion=True` adds a
learnable `uncond_motion_tokens` `[num_uncond_motion_tokens, motion_dim]` (init N(0, 1), like the
7B's), used where `motion_drop` is True or for the whole batch when `motion_tokens is None`.
Without it, `motion_tokens=None` skips the motion attention entirely (the base Wan model).

**ISA conditioning.** `conditioning="isa"` replaces the motion attention by interspatial
attention on the raw joints (`motion_mm`, `mtvjax.models.mvdit.isa_conditioning`): the motion-block slot
of every group holds `isa` instead of norm4/motion_attn, the groups are `isa.every` blocks long
(so `blocks/motion_block` is the ISA block), the point embedding `isa_points` is applied once
before the blocks and the point tokens are carried through the scans; `motion_drop` masks an
example's points (no unconditional tokens needed).

API: `MVDiTWan(WanDiTConfig)` (fields, presets, `wan_config`, `project_config`,
`block_location`: `mtvjax.models.mvdit.wan.config`; the blocks: `mtvjax.models.mvdit.wan.blocks`);
`from_config`; `param_shapes`, `param_counts`, `param_logical_axes`, `init_params` (no allocation
except the last); `trainable_mask` (motion modules + unconditional tokens, for optax);
`released_motion_rope`. Conversion: `mtvjax.models.mvdit.wan.convert`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mtvjax.models.layers.param_tree import abstract_params, count_params, init_module_params
from mtvjax.models.layers.rope import (RopeTable, motion_positions, rope_table_nd,
                                       wan_motion_band_dims, wan_vision_band_dims, wan_vision_rope)
from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit import motion_pe as PE
from mtvjax.models.mvdit.blocks import shard_video, shard_video_rope
from mtvjax.models.mvdit.wan.blocks import (BlockContext, WanBlockGroup, WanHead,
                                            WanImageEmbedding, block_class, default_kernel_init,
                                            dense, partitioned, scanned)
from mtvjax.models.mvdit.wan.config import (RELEASED_CENTRED_JOINTS, WanDiTConfig, stacked_axes,
                                            wan_config)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def timestep_sinusoid(timesteps, dim: int = 256) -> jax.Array:
    """Wan's sinusoid (17B §4.3): [cos(t·f_k) | sin(t·f_k)], f_k = 10000^(−k/(dim/2)).

    The frequencies are float64 host constants; the product and cos/sin run in float64 when JAX's
    x64 mode is on, else in float32 (|angle| ≤ 1000, so the embedding is within ~3e-5 of the
    float64 one). Returns float32 `[B, dim]`.
    """
    half = dim // 2
    freqs = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
    wide = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    angles = jnp.asarray(timesteps).astype(wide)[:, None] * jnp.asarray(freqs, wide)[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1).astype(jnp.float32)


def released_motion_rope(latent_frames: int, head_dim: int = 128,
                         joints=RELEASED_CENTRED_JOINTS) -> RopeTable:
    """The released 4-D motion table `[F·24, head_dim/2]` from already-centred joint positions
    (default: the exact float32 positions of 17B §5.2). Equals `rope.wan_motion_rope(F, mean)`
    for the dataset mean."""
    joints = np.asarray(joints, np.float32)
    return rope_table_nd(motion_positions(latent_frames, joints), wan_motion_band_dims(head_dim),
                         10000.0, np.float32)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class MVDiTWan(nn.Module):
    """MV-DiT-17B. See the module docstring; `config` is a `WanDiTConfig`."""

    config: WanDiTConfig

    @nn.compact
    def __call__(self, x, timesteps, text_emb, image_emb, motion_tokens=None, *, y=None,
                 mask=None, ref=None, text_lens=None, motion_drop=None,
                 motion_rope: RopeTable | None = None, motion_joints=None, motion_mm=None,
                 camera=None):
        """Flow-matching velocity for the noisy latents.

        Args:
          x: `[B, F, H, W, in_channels]` (36 = noisy 16 | mask 4 | reference 16), or the noisy
            `[B, F, H, W, 16]` with `y` `[B, F, H, W, 20]` (mask | reference, Wan's y) or `mask`
            `[.., 4]` and `ref` `[.., 16]`. H, W multiples of the spatial patch (2).
          timesteps: `[B]` float, σ·1000 in [0, 1000].
          text_emb: `[B, L, text_dim]` umT5 features, L ≤ text_len; rows ≥ L (and rows ≥
            `text_lens[b]` when given) are zero before the text MLP, and all text_len rows are
            attended, as released.
          image_emb: `[B, 257, image_dim]` CLIP features (penultimate block, no final norm).
          motion_tokens: `[B, M, motion_dim]` 4DMoT tokens (M = F·24, frame-major), or None:
            unconditional tokens when configured, else the motion attention is skipped.
          motion_drop: optional `[B]` bool; True replaces that sample's tokens by the learnable
            unconditional tokens (needs `uncond_motion`).
          motion_rope: the key table `[M, head_dim/2]`; default the table of `motion_pe` for
            M / 24 latent frames (for "4d" the released one, `released_motion_rope`).
          motion_joints: `[B, 24, 3]` the clip's first-frame joints (mm): the positions of the
            "dynamic" motion RoPE, required there; ignored by the other switches.
          motion_mm: `[B, T, 24, 3]` the window's joints (mm), T = 4·(F − 1) + 1: required with
            `conditioning="isa"` (then `motion_tokens` is ignored and `motion_drop` masks that
            example's points), ignored otherwise.
          camera: optional `camera.Camera` for ISA (default: the pinhole over 8H × 8W pixels).
        Returns:
          `[B, F, H, W, out_channels]` float32.
        """
        cfg = self.config
        dtype, pdt = cfg.compute_dtype, cfg.params_dtype
        x = self._channels(x, y, mask, ref)
        batch, frames, height, width, channels = x.shape
        pt, ph, pw = cfg.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"latent [F, H, W] = {[frames, height, width]} is not divisible by "
                             f"the patch size {cfg.patch_size}")
        gf, gh, gw = frames // pt, height // ph, width // pw

        # patch embedding (Conv3d, kernel = stride = patch) as a linear map over patches
        patches = x.reshape(batch, gf, pt, gh, ph, gw, pw, channels)
        patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(
            batch, gf * gh * gw, pt, ph, pw, channels)
        tokens = nn.DenseGeneral(
            cfg.dim, axis=(-4, -3, -2, -1), dtype=dtype, param_dtype=pdt,
            precision=cfg.precision,
            kernel_init=partitioned(default_kernel_init, (None, None, None, None, "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            name="patch_embedding")(patches.astype(dtype))
        tokens = shard_video(tokens)

        # time embedding e and 6-way modulation e0, in float32
        fkw = dict(dtype=jnp.float32, param_dtype=pdt, precision=cfg.precision)
        e = dense(cfg.dim, "time_embedding_0", (None, "mlp"), **fkw)(
            timestep_sinusoid(timesteps, cfg.freq_dim))
        e = dense(cfg.dim, "time_embedding_2", ("mlp", "embed"), **fkw)(nn.silu(e))
        e0 = dense(6 * cfg.dim, "time_projection", ("embed", "mlp"), **fkw)(nn.silu(e))
        e0 = e0.reshape(batch, 6, cfg.dim)

        # context: text MLP over zero-padded rows; CLIP MLPProj
        dkw = dict(dtype=dtype, param_dtype=pdt, precision=cfg.precision)
        text = self._pad_text(text_emb, text_lens)
        text = dense(cfg.dim, "text_embedding_0", (None, "mlp"), **dkw)(text.astype(dtype))
        text = dense(cfg.dim, "text_embedding_2", ("mlp", "embed"), **dkw)(
            nn.gelu(text, approximate=True))
        image = None if image_emb is None else WanImageEmbedding(cfg, name="img_emb")(image_emb)

        isa = None
        if cfg.uses_isa:
            motion, motion_rope = None, None
            isa = ISA.isa_inputs(cfg.isa, motion_mm, motion_drop, batch, gf, (height, width),
                                 camera, initializing=self.is_initializing())
            point_tokens = ISA.point_embed(cfg.isa, cfg.dim, name="isa_points", **dkw)(isa.points)
            tokens = (tokens, point_tokens.astype(tokens.dtype))
        else:
            motion, motion_rope = self._motion(motion_tokens, motion_drop, motion_rope, batch,
                                               motion_joints)
        vision_rope = wan_vision_rope(gf, gh, gw, cfg.head_dim)
        motion_q_rope = (vision_rope if PE.released_query(cfg.motion_pe, cfg.motion_query_rope)
                         else PE.query_table(cfg.motion_pe, cfg.motion_query_rope, gf, gh, gw,
                                             wan_vision_band_dims(cfg.head_dim),
                                             wan_motion_band_dims(cfg.head_dim), 10000.0,
                                             np.float64))
        ctx = BlockContext(e0, text, image, motion, shard_video_rope(vision_rope), motion_rope,
                           shard_video_rope(motion_q_rope), isa)
        h = self._blocks(tokens, ctx, (gf, gh, gw))
        if isinstance(h, tuple):
            h = h[0]

        # head: (modulation + e) shift/scale, LN without affine, Linear to p·C
        out = WanHead(cfg.dim, cfg.patch_volume * cfg.out_channels, cfg.eps, dtype, pdt,
                            cfg.precision, name="head")(h, e)
        out = out.reshape(batch, gf, gh, gw, pt, ph, pw, cfg.out_channels)
        out = out.transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return out.reshape(batch, frames, height, width, cfg.out_channels).astype(jnp.float32)

    # ------------------------------------------------------------------------------------------

    def _channels(self, x, y, mask, ref):
        cfg = self.config
        if y is not None:
            x = jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
        elif mask is not None or ref is not None:
            if mask is None or ref is None:
                raise ValueError("pass both `mask` and `ref` (or `y`, or the full input)")
            x = jnp.concatenate([x, mask.astype(x.dtype), ref.astype(x.dtype)], axis=-1)
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"expected input [B, F, H, W, {cfg.in_channels}] after joining "
                             f"noisy/mask/reference channels, got {x.shape}")
        return x

    def _pad_text(self, text, text_lens):
        cfg = self.config
        length = text.shape[1]
        if text_lens is not None:
            keep = jnp.arange(length)[None, :] < jnp.asarray(text_lens)[:, None]
            text = jnp.where(keep[..., None], text, 0)
        if cfg.text_len is not None:
            if length > cfg.text_len:
                raise ValueError(f"{length} text rows exceed text_len {cfg.text_len}")
            text = jnp.pad(text, ((0, 0), (0, cfg.text_len - length), (0, 0)))
        return text

    def _motion(self, tokens, drop, table, batch, joints=None):
        cfg = self.config
        if not cfg.motion_every:
            return None, None
        uncond = None
        if cfg.uncond_motion:
            uncond = self.param("uncond_motion_tokens",
                                partitioned(nn.initializers.normal(1.0), (None, None)),
                                (cfg.num_uncond_motion_tokens, cfg.motion_dim),
                                cfg.params_dtype)
        if drop is not None and uncond is None:
            raise ValueError("motion_drop needs uncond_motion=True (the released 17B has no "
                             "unconditional motion tokens)")
        if tokens is None:
            if uncond is not None:
                tokens = jnp.broadcast_to(uncond[None], (batch,) + uncond.shape)
            elif self.is_initializing():  # create the motion params from a one-frame dummy
                tokens = jnp.zeros((batch, cfg.num_joints, cfg.motion_dim), jnp.float32)
            else:
                return None, None
        elif drop is not None:
            if tokens.shape[1:] != uncond.shape:
                raise ValueError(f"motion tokens {tokens.shape[1:]} and unconditional tokens "
                                 f"{uncond.shape} differ in shape")
            tokens = jnp.where(jnp.asarray(drop)[:, None, None], uncond[None].astype(tokens.dtype),
                               tokens)
        if tokens.ndim != 3 or tokens.shape[-1] != cfg.motion_dim:
            raise ValueError(f"expected motion tokens [B, M, {cfg.motion_dim}], got "
                             f"{tokens.shape}")
        num = tokens.shape[1]
        if table is None:
            if num % cfg.num_joints or cfg.num_joints != len(RELEASED_CENTRED_JOINTS):
                raise ValueError(f"{num} motion tokens are not frames × 24 joints; pass "
                                 "`motion_rope` explicitly")
            table = PE.key_table(cfg.motion_pe, num // cfg.num_joints, RELEASED_CENTRED_JOINTS,
                                 wan_motion_band_dims(cfg.head_dim), 10000.0, joints,
                                 batch=batch, num_joints=cfg.num_joints,
                                 initializing=self.is_initializing())
        # zero-pad motion_dim → dim (released: a fixed 2048-wide zeros tensor at D = 5120, §2.4)
        tokens = jnp.pad(tokens.astype(cfg.compute_dtype),
                         ((0, 0), (0, 0), (0, cfg.dim - cfg.motion_dim)))
        if cfg.motion_pe == "learnable":
            tokens = PE.MotionPositionEmbedding(cfg.num_joints, cfg.max_motion_frames,
                                                cfg.params_dtype, name="motion_pos_embed")(tokens)
        return tokens, table

    def _blocks(self, x, ctx: BlockContext, grid=None):
        cfg = self.config
        k = cfg.group_every
        grid = tuple(grid) if cfg.uses_isa else None
        if not k:
            x, _ = scanned(block_class(cfg), cfg.num_layers, "layers", cfg.scan_unroll)(
                cfg, motion=False, name="blocks")(x, ctx)
            return x
        groups, rest = divmod(cfg.num_layers, k)
        if groups:
            x, _ = scanned(WanBlockGroup, groups, "layers", cfg.scan_unroll)(
                cfg, num_plain=k - 1, grid=grid, name="blocks")(x, ctx)
        if rest:
            x, _ = WanBlockGroup(cfg, num_plain=rest - 1, grid=grid, name="tail")(x, ctx)
        return x


# ----------------------------------------------------------------------------------------------
# Parameters: init, shapes, counts, logical axes, trainable mask
# ----------------------------------------------------------------------------------------------


def dummy_inputs(config: WanDiTConfig, batch: int = 1) -> tuple:
    """Smallest inputs that create every parameter (one patch, one text row, one CLIP token,
    one frame of motion tokens)."""
    pt, ph, pw = config.patch_size
    x = jnp.zeros((batch, pt, ph, pw, config.in_channels), jnp.float32)
    motion = (jnp.zeros((batch, config.num_joints, config.motion_dim), jnp.float32)
              if config.motion_every else None)
    return (x, jnp.zeros((batch,), jnp.float32),
            jnp.zeros((batch, 1, config.text_dim), jnp.float32),
            jnp.zeros((batch, 1, config.image_dim), jnp.float32), motion)


def from_config(config, **overrides) -> "MVDiTWan":
    """The model of a project config (`config.model` with family "wan", plus the shared
    top-level `dtype`, `param_dtype`, `remat`); keyword arguments override fields."""
    return MVDiTWan(wan_config(config, **overrides))


def boxed_param_shapes(config) -> dict:
    """`params` of `init` as ShapeDtypeStructs inside their logical-partitioning boxes (cached
    per config)."""
    return abstract_params(MVDiTWan, wan_config(config), dummy_inputs)


def param_shapes(config) -> dict:
    """Unboxed `params` ShapeDtypeStructs, without allocating anything (`jax.eval_shape`;
    cached per config)."""
    return nn.unbox(boxed_param_shapes(config))


def init_params(config, rng) -> dict:
    """Freshly initialised, unboxed float32 params."""
    return nn.unbox(init_module_params(MVDiTWan, wan_config(config), dummy_inputs, rng))


def param_logical_axes(config) -> dict:
    """`PartitionSpec`s of LOGICAL axis names per parameter (scan axes `layers` / `sublayers`
    first), for `mtvjax.parallel.sharding.logical_to_spec` or `nn.logical_to_mesh_sharding`."""
    return nn.get_partition_spec(boxed_param_shapes(config))


def is_trainable_path(path: tuple) -> bool:
    """Trainable in the released recipe: the motion-attention modules (norm4, motion_attn) and
    the unconditional motion tokens / learnable motion embedding when configured (with ISA
    conditioning: the ISA blocks and point embedding); everything Wan-named is frozen."""
    return ("motion_attn" in path or "norm4" in path or path[-1] == "uncond_motion_tokens"
            or "motion_pos_embed" in path or ISA.is_isa_path(path))


def trainable_mask(params) -> dict:
    """Boolean pytree like `params` (nested dicts; boxed or not) for `optax.masked`."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: is_trainable_path(k) for k in flat})


def param_counts(config) -> dict:
    """{"total", "trainable", "tensors_released"} by shape evaluation only.

    `tensors_released` counts torch tensors of the released layout: a stacked leaf of
    `[G, ...]` is G tensors."""
    shapes = param_shapes(config)
    flat = traverse_util.flatten_dict(shapes)
    cfg = wan_config(config)
    total = count_params(shapes)
    trainable = sum(int(np.prod(v.shape)) for k, v in flat.items() if is_trainable_path(k))
    tensors = sum(int(np.prod(leaf.shape[:stacked_axes(cfg, path)]))
                  for path, leaf in flat.items())
    return {"total": total, "trainable": trainable, "tensors_released": tensors}
