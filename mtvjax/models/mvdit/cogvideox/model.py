"""MV-DiT-7B: the CogVideoX-5B-based motion video transformer of MTVCrafter, in Flax linen.

The default configuration reproduces the released model (docs/reference/mvdit7b.md), including its
oddities:
  * 32 input channels = 16 noisy + 16 reference latent channels, concatenated in that order;
    the output is the 16-channel v-prediction (§3.7, §6 "Concatenation").
  * timestep embedding: sinusoid of width D (cos first), Linear(D→E), SiLU, Linear(E→E) (§3.1).
  * patch embed: non-overlapping p×p patches per frame, token s = f·h·w + i·w + j, patch vector
    in (c, dy, dx) order; no positional embedding, no text tokens (§3.2).
  * block (§3.3): norm1 (AdaLN-zero, chunks shift|scale|gate|dead|dead|dead) → self-attention
    with the vision RoPE, gated → **attn0**: ungated motion cross-attention whose query is the raw
    residual stream (no norm, no modulation), q rotated by the vision table, k by the 4-D motion
    table, v untouched → norm2 → tanh-GELU FFN, gated.
  * norm_final (plain LN), then the final AdaLayerNorm with **shift first** (§3.4, §3.5),
    proj_out, unpatchify with the patch vector read as (c, dy, dx) (§3.7).
  * the CogVideoX `text_proj` exists (its parameters are in the checkpoint) but is never used.
  * `unconditional_motion_token`: a learned [312, 3072] sequence that replaces the motion tokens
    in the CFG unconditional branch (fixed shape in the release, whatever the width).

Options for the paper's variants (defaults = released): `motion_every` (motion attention in
every k-th block: blocks 0, k, 2k, ...; 0 = none), `motion_v_norm` (per-head LayerNorm on the
motion values), `motion_query_rope="4d"` (vision queries placed at 4-D positions (t, h, w, z=0) in
the motion table's [t|x|y|z] bands instead of the vision table), `motion_pe` (the motion keys'
positional encoding: "4d" released, "dynamic", "learnable", "time", "xy", "xyz", "none"; see
`mtvjax.models.mvdit.motion_pe` for each and the matching query rule).

`conditioning="isa"`: interspatial attention (`isa`, in blocks 0, k, 2k, … with k =
`isa.every`, at attn0's place) on the raw joints `motion_mm` instead of the 4DMoT tokens; no attn0,
no unconditional tokens; `motion_drop` masks an example's points (`mtvjax.models.mvdit.isa_conditioning`).

Layers are an `nn.scan` over groups of `motion_every` (ISA: `isa.every`) blocks (one group = one
block in the released layout), with parameters stacked along a leading `layers` axis under
`params/blocks/block_{r}/...`; `remat` chooses a rematerialisation policy for the scanned body.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.models.mvdit.blocks import (AdaLNModulation, Linear, TimestepEmbedding, logical,
                                        shard_video, shard_video_rope, timestep_sinusoid)
from mtvjax.models.layers.attention import DEFAULT_IMPLEMENTATION, AttentionKernel
from mtvjax.models.layers.dtypes import DTYPES, remat_policy
from mtvjax.models.layers.norms import LayerNorm
from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit.cogvideox.blocks import BlockSpec, CogVideoXMVBlockGroup, PatchEmbed
from mtvjax.models.mvdit.cogvideox.config import CogVideoXDiTConfig
from mtvjax.models.mvdit import motion_pe as PE
from mtvjax.models.layers.rope import (DEFAULT_THETA, RopeTable, centre_joint_positions,
                                cogvideox_motion_band_dims, cogvideox_motion_rope,
                                cogvideox_vision_band_dims, cogvideox_vision_rope)

NUM_JOINTS = 24
RELEASED_UNCOND_SHAPE = (312, 3072)  # 13 latent frames × 24 joints, width 3072 (7B §1)
MOTION_QUERY_ROPES = PE.MOTION_QUERY_ROPES


def load_joint_positions(joint_positions=None, path: str = "") -> np.ndarray:
    """Dataset-mean joint positions `[24, 3]` (raw mm, camera frame; centred inside the RoPE
    builder): given values, else the `.npy` at `path`, else zeros."""
    if joint_positions is not None and len(joint_positions):
        arr = np.asarray(joint_positions, np.float32)
    elif path:
        arr = np.load(path, allow_pickle=False).astype(np.float32)
    else:
        return np.zeros((NUM_JOINTS, 3), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{path or 'joint_positions'}: expected finite [joints, 3] positions, "
                         f"got shape {arr.shape}")
    return arr


class MVDiTCogVideoX(nn.Module):
    """MV-DiT-7B transformer (docs/reference/mvdit7b.md). See the module docstring for the layout.

    Attributes (defaults = the released 7B, CogVideoX-5B widths):
      num_layers, num_heads, head_dim: D = num_heads·head_dim (3072); head_dim % 16 == 0.
      in_channels / out_channels / patch_size: 32 / 16 / 2.
      time_embed_dim: E. text_embed_dim: width of the unused `text_proj` (0: omit it).
      flip_sin_to_cos, freq_shift: timestep sinusoid settings (True, 0).
      norm_eps, qk_norm_eps: 1e-5 (block/final LNs), 1e-6 (per-head q/k norms).
      modulation_chunks: rows of norm1/norm2's Linear in units of D (6 released; 3 of them used).
      uncond_motion_shape: shape of the learned `unconditional_motion_token` ((312, 3072) in the
        release whatever D; usable only when it equals the motion tokens' [M, D]); None: omit it.
      joint_positions: `[24, 3]` dataset-mean joint positions in mm (`data/mean.npy` for the
        released model), as a tuple of tuples; None means zeros, which leaves the motion RoPE's
        x/y/z bands unrotated (only the time band acts). Centred per axis inside.
      rope_theta: 10000.
      motion_every: motion attention in blocks 0, k, 2k, ... (1 released; 0 none);
        num_layers % motion_every == 0.
      motion_v_norm: per-head LayerNorm `attn0/norm_v` on the motion values (paper variant).
      motion_query_rope: "vision" (released) or "4d" (queries at (t, h, w, 0) in motion bands).
      motion_pe: the motion keys' positional encoding, "4d" (released) | "dynamic" (per-clip
        joints, `motion_joints` required) | "learnable" | "time" | "xy" | "xyz" | "none"; the
        query side follows it (`mtvjax.models.mvdit.motion_pe`).
      max_motion_frames: latent frames covered by the "learnable" frame embedding (13).
      motion_out_zero_init: `attn0/to_out` starts at zero in `init` (adding motion to a
        pretrained base leaves its output unchanged).
      remat: "none", "full" or a `jax.checkpoint_policies` name, for each scanned group.
      dtype / param_dtype: compute dtype (float32 default, bfloat16 option) / parameter dtype.
      precision: matmul precision name ("default", "high", "highest").
      attention_implementation: a name in the `attention` registry or an `AttentionKernel`
        (None → "auto"); `from_config` builds the kernel from `attention_implementation`,
        `attention_chunk` and `attention_kv_chunk`.
      conditioning: "motion_attention" (released: 4DMoT tokens, attn0) | "isa" (interspatial
        attention on `motion_mm`; `motion_every`, the motion PE switches and the unconditional
        tokens are then unused).
      isa: the `ISASettings` of the ISA path (None: defaults).
      scan_unroll: layer groups per step of the layer scan (1: compile time flat in depth; the
        number of groups or more: a straight-line program without the stacked per-layer
        residuals, faster for a few layers).
    """

    num_layers: int = 42
    num_heads: int = 48
    head_dim: int = 64
    in_channels: int = 32
    out_channels: int = 16
    patch_size: int = 2
    time_embed_dim: int = 512
    text_embed_dim: int = 4096
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    norm_eps: float = 1e-5
    qk_norm_eps: float = 1e-6
    modulation_chunks: int = 6
    uncond_motion_shape: tuple[int, int] | None = RELEASED_UNCOND_SHAPE
    num_joints: int = NUM_JOINTS
    joint_positions: tuple | None = None
    rope_theta: float = DEFAULT_THETA
    motion_every: int = 1
    motion_v_norm: bool = False
    motion_query_rope: str = "vision"
    motion_pe: str = "4d"
    max_motion_frames: int = PE.DEFAULT_MAX_MOTION_FRAMES
    motion_out_zero_init: bool = True
    remat: str = "none"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: str | None = None
    attention_implementation: str | AttentionKernel | None = None
    conditioning: str = "motion_attention"
    isa: ISA.ISASettings | None = None
    scan_unroll: int = 1

    @property
    def uses_isa(self) -> bool:
        return ISA.check_conditioning(self.conditioning) == "isa"

    @property
    def isa_settings(self) -> ISA.ISASettings:
        return ISA.ISASettings.create(self.isa)

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    def _spec(self) -> BlockSpec:
        return BlockSpec(num_heads=self.num_heads, head_dim=self.head_dim, norm_eps=self.norm_eps,
                         qk_norm_eps=self.qk_norm_eps, modulation_chunks=self.modulation_chunks,
                         motion_v_norm=self.motion_v_norm,
                         motion_out_zero_init=self.motion_out_zero_init,
                         attention_implementation=self.attention_implementation,
                         dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)

    def _check(self):
        if self.uses_isa:
            every = self.isa_settings.every
            if self.num_layers % every:
                raise ValueError(f"num_layers {self.num_layers} is not a multiple of isa.every "
                                 f"{every}")
        if self.motion_every < 0 or (self.motion_every and self.num_layers % self.motion_every):
            raise ValueError(f"num_layers {self.num_layers} is not a multiple of motion_every "
                             f"{self.motion_every}")
        PE.check_switches(self.motion_pe, self.motion_query_rope)
        if self.head_dim % 16:
            raise ValueError(f"head_dim must be a multiple of 16, got {self.head_dim}")
        remat_policy(self.remat)  # raises on an unknown policy name

    def _unroll(self, groups: int) -> int:
        if self.scan_unroll < 1:
            raise ValueError(f"scan_unroll must be >= 1, got {self.scan_unroll}")
        return min(self.scan_unroll, groups)

    # ------------------------------------------------------------------------------------------
    # RoPE tables (host-side numpy, float32; constants of the traced program)
    # ------------------------------------------------------------------------------------------

    def vision_rope(self, frames: int, grid_h: int, grid_w: int) -> RopeTable:
        return cogvideox_vision_rope(frames, grid_h, grid_w, self.head_dim, self.rope_theta)

    def motion_rope(self, motion_frames: int) -> RopeTable:
        """The released 4-D key table (dataset-mean joints), whatever `motion_pe`."""
        return cogvideox_motion_rope(motion_frames, self._joints(), self.head_dim,
                                     self.rope_theta)

    def _joints(self) -> np.ndarray:
        joints = load_joint_positions(self.joint_positions)
        if joints.shape[0] != self.num_joints:
            raise ValueError(f"joint_positions has {joints.shape[0]} joints, expected "
                             f"{self.num_joints}")
        return joints

    def motion_key_rope_table(self, motion_frames: int, motion_joints=None,
                              batch: int = 1) -> RopeTable | None:
        """Key table of `motion_pe`: `[M, d/2]` host constant ("4d": `motion_rope`), `[B, M,
        d/2]` ("dynamic", from `motion_joints`), or None (keys not rotated)."""
        return PE.key_table(self.motion_pe, motion_frames, centre_joint_positions(self._joints()),
                            cogvideox_motion_band_dims(self.head_dim), self.rope_theta,
                            motion_joints, batch=batch, num_joints=self.num_joints,
                            initializing=self.scope is not None and self.is_initializing())

    def motion_query_rope_table(self, frames: int, grid_h: int, grid_w: int) -> RopeTable | None:
        if PE.released_query(self.motion_pe, self.motion_query_rope):
            return self.vision_rope(frames, grid_h, grid_w)
        return PE.query_table(self.motion_pe, self.motion_query_rope, frames, grid_h, grid_w,
                              cogvideox_vision_band_dims(self.head_dim),
                              cogvideox_motion_band_dims(self.head_dim), self.rope_theta)

    # ------------------------------------------------------------------------------------------

    def _motion_input(self, motion_tokens, motion_drop, batch: int, dtype):
        uncond = None
        if self.uncond_motion_shape is not None:
            uncond = self.param("unconditional_motion_token",
                                logical(nn.initializers.normal(1.0), ("motion_tokens", "embed")),
                                tuple(self.uncond_motion_shape), self.param_dtype)
        need_uncond = motion_tokens is None or motion_drop is not None
        if need_uncond and uncond is None:
            raise ValueError("the unconditional path needs `uncond_motion_shape`")
        if need_uncond and uncond.shape[-1] != self.width:
            raise ValueError(f"unconditional_motion_token is {uncond.shape[-1]} wide but the "
                             f"model width is {self.width}; the released token is usable only "
                             "at D = 3072 (docs/reference/mvdit7b.md §1)")
        if motion_tokens is None:
            return jnp.broadcast_to(uncond.astype(dtype)[None], (batch,) + uncond.shape)
        motion_tokens = jnp.asarray(motion_tokens)
        if motion_tokens.ndim != 3 or motion_tokens.shape[-1] != self.width:
            raise ValueError(f"motion tokens must be [B, M, {self.width}] (their width is the "
                             f"model width; no projection exists), got {motion_tokens.shape}")
        motion_tokens = motion_tokens.astype(dtype)
        if motion_drop is None:
            return motion_tokens
        if motion_tokens.shape[1:] != uncond.shape:
            raise ValueError(f"motion tokens {motion_tokens.shape[1:]} and the unconditional "
                             f"tokens {uncond.shape} differ in shape; they share one batch")
        motion_drop = jnp.asarray(motion_drop, bool).reshape(-1, 1, 1)
        return jnp.where(motion_drop, uncond.astype(dtype)[None], motion_tokens)

    @nn.compact
    def __call__(self, latents, ref_latents=None, timesteps=None, motion_tokens=None,
                 motion_drop=None, motion_joints=None, *, motion_mm=None, camera=None):
        """Predicts v for the noisy latents.

        Args:
          latents: `[B, F, H, W, 16]` noisy latents (channel-last), or `[B, F, H, W, 32]` already
            concatenated [noisy | reference] when `ref_latents` is None.
          ref_latents: `[B, F, H, W, 16]` reference-image latents (channels 16–31 of the input).
          timesteps: `[B]` (integer or float) diffusion timesteps.
          motion_tokens: `[B, M, D]` 4DMoT tokens, M = frames·24 frame-major (index f·24 + j);
            None → the learned unconditional tokens for every batch element.
          motion_drop: optional `[B]` bool; True replaces that element's motion tokens with the
            unconditional tokens (CFG in one batch).
          motion_joints: `[B, 24, 3]` the clip's first-frame joints (mm, camera frame): the
            positions of the "dynamic" motion RoPE, required there; ignored by other switches.
          motion_mm: `[B, T, 24, 3]` the window's joints (mm, camera space), T = 4·(F − 1) + 1;
            required with `conditioning="isa"` (then `motion_tokens` is ignored and `motion_drop`
            drops that example's points), ignored otherwise.
          camera: optional `camera.Camera` for ISA (default: the pinhole over 8H × 8W pixels).
        Returns:
          `[B, F, H, W, out_channels]` in the compute dtype.
        """
        self._check()
        if timesteps is None:
            raise ValueError("timesteps are required")
        dtype = self.dtype
        x = latents if ref_latents is None else jnp.concatenate([latents, ref_latents], axis=-1)
        if x.ndim != 5 or x.shape[-1] != self.in_channels:
            raise ValueError(f"expected [B, F, H, W, {self.in_channels}] input channels "
                             f"(noisy | reference), got {x.shape}")
        b, f, hh, ww, _ = x.shape
        p, width = self.patch_size, self.width
        gh, gw = hh // p, ww // p
        kw = dict(dtype=dtype, param_dtype=self.param_dtype, precision=self.precision)

        t_emb = timestep_sinusoid(timesteps, width, self.flip_sin_to_cos, self.freq_shift)
        emb = TimestepEmbedding(self.time_embed_dim, name="time_embedding", **kw)(
            t_emb.astype(dtype))
        emb_act = nn.silu(emb)

        tokens = shard_video(PatchEmbed(width, p, self.text_embed_dim, name="patch_embed",
                                        **kw)(x.astype(dtype)))
        if self.uses_isa:
            tokens = self._isa_blocks(tokens, emb_act, motion_mm, motion_drop, camera, (f, gh, gw),
                                      (hh, ww), kw)
            return self._head(tokens, emb_act, b, f, gh, gw, kw)
        motion = self._motion_input(motion_tokens, motion_drop, b, dtype)
        if motion.shape[1] % self.num_joints:
            raise ValueError(f"{motion.shape[1]} motion tokens are not a whole number of "
                             f"{self.num_joints}-joint frames")

        if self.motion_pe == "learnable" and self.motion_every:
            motion = PE.MotionPositionEmbedding(self.num_joints, self.max_motion_frames,
                                                self.param_dtype, name="motion_pos_embed")(motion)
        vision = self.vision_rope(f, gh, gw)
        motion_k = self.motion_key_rope_table(motion.shape[1] // self.num_joints, motion_joints,
                                              b)
        motion_q = self.motion_query_rope_table(f, gh, gw)
        tables = [None if t is None else RopeTable(jnp.asarray(t.cos), jnp.asarray(t.sin))
                  for t in (vision, motion_q, motion_k)]
        tables[:2] = map(shard_video_rope, tables[:2])    # the video tokens' tables

        group_size = self.motion_every or 1
        group = CogVideoXMVBlockGroup
        use_remat, policy = remat_policy(self.remat)
        if use_remat:
            group = nn.remat(group, policy=policy, prevent_cse=False)
        stack = nn.scan(group, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * 5, length=self.num_layers // group_size,
                        unroll=self._unroll(self.num_layers // group_size),
                        metadata_params={nn.PARTITION_NAME: "layers"})
        tokens, _ = stack(self._spec(), group_size, self.motion_every > 0, name="blocks")(
            tokens, emb_act, motion, *tables)
        return self._head(tokens, emb_act, b, f, gh, gw, kw)

    def _isa_blocks(self, tokens, emb_act, motion_mm, motion_drop, camera, grid, latent_size, kw):
        """The layer scan of the ISA conditioning (groups of `isa.every` blocks, ISA in the first
        of each; the point tokens are part of the carry)."""
        settings = self.isa_settings
        b = tokens.shape[0]
        inputs = ISA.isa_inputs(settings, motion_mm, motion_drop, b, grid[0], latent_size, camera,
                                initializing=self.is_initializing())
        point_tokens = ISA.point_embed(settings, self.width, name="isa_points", **kw)(
            inputs.points).astype(tokens.dtype)
        vision = self.vision_rope(*grid)
        vision = RopeTable(jnp.asarray(vision.cos), jnp.asarray(vision.sin))
        group = CogVideoXMVBlockGroup
        use_remat, policy = remat_policy(self.remat)
        if use_remat:
            group = nn.remat(group, policy=policy, prevent_cse=False)
        stack = nn.scan(group, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * 6, length=self.num_layers // settings.every,
                        unroll=self._unroll(self.num_layers // settings.every),
                        metadata_params={nn.PARTITION_NAME: "layers"})
        (tokens, _), _ = stack(self._spec(), settings.every, False, settings, tuple(grid),
                               name="blocks")((tokens, point_tokens), emb_act, None, vision,
                                              None, None, inputs)
        return tokens

    def _head(self, tokens, emb_act, b, f, gh, gw, kw):
        p = self.patch_size
        hh, ww = gh * p, gw * p
        tokens = LayerNorm(self.norm_eps, logical_axes=("embed",), param_dtype=self.param_dtype,
                           name="norm_final")(tokens)
        tokens, _ = AdaLNModulation(2, ("shift", "scale"), self.norm_eps, name="norm_out",
                                    **kw)(tokens, emb_act)
        out = Linear(p * p * self.out_channels, ("embed", "patch"), name="proj_out",
                     **kw)(tokens)
        out = out.reshape(b, f, gh, gw, self.out_channels, p, p).transpose(0, 1, 2, 5, 3, 6, 4)
        return out.reshape(b, f, hh, ww, self.out_channels)


# ----------------------------------------------------------------------------------------------
# Construction from a config, abstract parameters, counts
# ----------------------------------------------------------------------------------------------

def from_config(config, **overrides) -> MVDiTCogVideoX:
    """The model of a `configs/mvdit.py` config (`config.model`, `config.dtype`, `config.remat`,
    ...); keyword arguments override model attributes."""
    fields = dataclasses.asdict(CogVideoXDiTConfig.from_fields(config.model))
    joints = load_joint_positions(fields.pop("joint_positions") or None,
                                  fields.pop("joint_positions_path"))
    kernel = AttentionKernel(fields.pop("attention_implementation") or DEFAULT_IMPLEMENTATION,
                             fields.pop("attention_chunk"), fields.pop("attention_kv_chunk"))
    kwargs = dict(fields, joint_positions=tuple(map(tuple, joints.tolist())),
                  attention_implementation=kernel,
                  isa=ISA.ISASettings.create(fields["isa"]),
                  remat=config.get("remat", "none"),
                  dtype=DTYPES[config.get("dtype", "float32")],
                  param_dtype=DTYPES[config.get("param_dtype", "float32")])
    kwargs.update(overrides)
    return MVDiTCogVideoX(**kwargs)


def dummy_inputs(model: MVDiTCogVideoX, frames: int = 1, batch: int = 1):
    """Smallest inputs `init` accepts: one patch per frame, `frames`·24 motion tokens."""
    p = model.patch_size
    return dict(latents=jnp.zeros((batch, frames, p, p, model.in_channels), model.dtype),
                timesteps=jnp.zeros((batch,), jnp.int32),
                motion_tokens=jnp.zeros((batch, frames * model.num_joints, model.width),
                                        model.dtype))


def abstract_variables(model: MVDiTCogVideoX):
    """Boxed `ShapeDtypeStruct` variables of `model.init`, without allocating anything."""
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **dummy_inputs(model)))


def abstract_params(model: MVDiTCogVideoX):
    """Unboxed abstract `params` tree."""
    return nn.meta.unbox(abstract_variables(model))["params"]


def init_params(model: MVDiTCogVideoX, rng, frames: int = 1):
    """Unboxed freshly initialised `params`."""
    return nn.meta.unbox(model.init(rng, **dummy_inputs(model, frames)))["params"]


def param_count(params) -> tuple[int, int]:
    """(number of parameters, number of tensors in the released per-layer layout).

    Stacked leaves under `blocks` count once per layer (group) slot, as torch stores them.
    """
    total, tensors = 0, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        total += int(np.prod(leaf.shape))
        keys = [getattr(k, "key", None) for k in path]
        tensors += leaf.shape[0] if "blocks" in keys else 1
    return total, tensors


def logical_axes(model: MVDiTCogVideoX):
    """`params` tree of logical axis-name tuples (for `config.sharding_rules`)."""
    return nn.get_partition_spec(abstract_variables(model))["params"]
