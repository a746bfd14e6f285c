"""Positional-encoding switches of the MV-DiT motion attention (`motion_pe`), both families.

The released models rotate the motion keys with a 4-D RoPE table over (t, x, y, z): t the
latent frame index, x/y/z the dataset-mean joint positions in mm, centred per axis over the 24
joints (`rope.motion_rope_table`); the queries (vision tokens) are rotated by the vision table
("vision", released) or, in the paper's stated formulation, at (t, h, w, z=0) in the motion
table's [t|x|y|z] bands ("4d"). `motion_pe` chooses the key side; the query side follows the
rule below so queries and keys always share their position axes.

Key side (`motion_pe`), band layout [t | x | y | z] of the family (`*_motion_band_dims`):

  "4d"        released: t, x, y, z (dataset-mean joints, a host constant; bit-identical).
  "dynamic"   t, x, y, z with x/y/z the clip's own first-frame joints (`motion_joints`
              `[B, 24, 3]` mm, centred per axis over the joints as `centre_joint_positions`):
              a per-example `[B, M, head_dim/2]` table computed in JAX (float32), jit-able.
  "time"      1-D temporal RoPE in the t band only; the x/y/z bands sit at position 0
              (unrotated). Chosen over a whole-head 1-D RoPE so that the frequencies of the
              t band are exactly those of "4d": the ablation removes the spatial bands only.
  "xy"        x and y bands at the (dataset-mean) joint positions; t and z at 0.
  "xyz"       x, y and z bands; t at 0 (3-D spatial, no time).
  "none"      no rotation of the keys.
  "learnable" no rotation; a learnable additive embedding `motion_pos_embed` (`joint_embed`
              `[num_joints, width]` + `frame_embed` `[max_motion_frames, width]`, init
              N(0, 0.02²)) on the motion tokens before the key/value projections (shared by all
              motion blocks; error when a clip has more than `max_motion_frames` latent frames).
              It is added to whatever tokens the attention sees, the unconditional ones too;
              the 17B adds it after the zero-padding to the model width (width = dim).

The static switches ("4d", "time", "xy", "xyz") use the model's dataset-mean joints: the 7B's
`joint_positions` (zeros when unset, which leaves x/y/z unrotated), the 17B's released
`RELEASED_CENTRED_JOINTS`. "dynamic" with the dataset mean as `motion_joints` reproduces "4d" up
to float32 rounding (its table is computed by XLA, not numpy; ~1e-4 in cos/sin at mm scale).

Query side (`motion_query_rope` "vision" | "4d"), the rule: the query table uses the same
position axes as the key table, with t ↔ t, x ↔ h, y ↔ w, z ↔ 0 (vision tokens have no depth);
an axis the key switch leaves at 0 is at 0 for the queries too.

  "4d", "dynamic"     queries as configured: the vision table ("vision") or (t, h, w, 0) in the
                      motion bands ("4d"); unchanged from before.
  "time"              only the t band rotates, at the frame index (the same table for "vision"
                      and "4d": both families' vision t band equals their motion t band).
  "xy", "xyz"         (h, w) spatial only, no time: the vision table at (0, h, w) ("vision") or
                      the motion bands at (0, h, w, 0) ("4d").
  "none", "learnable" queries are not rotated in the motion attention.

Tables are `rope.RopeTable`s; None means "no rotation" (`MVAttention`, `WanMotionAttention`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mtvjax.models.layers.rope import (RopeTable, grid_positions, motion_positions, rope_inv_freq,
                                rope_table_nd)

MOTION_PES = ("4d", "dynamic", "learnable", "time", "xy", "xyz", "none")
MOTION_QUERY_ROPES = ("vision", "4d")
DEFAULT_MAX_MOTION_FRAMES = 13   # latent frames of the released 49-frame window

# Position axes (t, x, y, z) each key switch rotates; None: no rotation at all.
_KEY_AXES = {"4d": (True, True, True, True), "dynamic": (True, True, True, True),
             "time": (True, False, False, False), "xy": (False, True, True, False),
             "xyz": (False, True, True, True), "none": None, "learnable": None}


def check_switches(motion_pe: str, motion_query_rope: str) -> None:
    if motion_pe not in MOTION_PES:
        raise ValueError(f"unknown motion_pe {motion_pe!r}; expected one of {MOTION_PES}")
    if motion_query_rope not in MOTION_QUERY_ROPES:
        raise ValueError(f"unknown motion_query_rope {motion_query_rope!r}; expected one of "
                         f"{MOTION_QUERY_ROPES}")


def key_axes(motion_pe: str) -> tuple[bool, bool, bool, bool] | None:
    """(t, x, y, z) position axes the keys rotate with; None: keys are not rotated."""
    check_switches(motion_pe, "vision")
    return _KEY_AXES[motion_pe]


def released_query(motion_pe: str, motion_query_rope: str) -> bool:
    """True when the motion queries use the family's own vision table (the released layout)."""
    return motion_query_rope == "vision" and motion_pe in ("4d", "dynamic")


def _zero_axes(pos: np.ndarray, axes: Sequence[bool]) -> np.ndarray:
    pos = np.array(pos, dtype=np.float32)
    pos[:, [not a for a in axes]] = 0.0
    return pos


def static_key_table(motion_pe: str, latent_frames: int, centred_joints, band_dims,
                     theta: float) -> RopeTable | None:
    """Host-side float32 key table `[F·J, head_dim/2]` of a static switch ("4d", "time", "xy",
    "xyz") from already-centred joints `[J, 3]` mm; None for "none"/"learnable". With all axes
    on this is exactly `rope.motion_rope_table` (same float32 steps)."""
    if motion_pe == "dynamic":
        raise ValueError("the dynamic table is per example: use `dynamic_key_table`")
    axes = key_axes(motion_pe)
    if axes is None:
        return None
    pos = motion_positions(latent_frames, centred_joints)
    if not all(axes):
        pos = _zero_axes(pos, axes)
    return rope_table_nd(pos, band_dims, theta, np.float32)


def dynamic_key_table(motion_joints, latent_frames: int, band_dims: Sequence[int],
                      theta: float) -> RopeTable:
    """Per-example 4-D key table `[B, F·J, head_dim/2]` in JAX float32 from the clip's own
    joints `[B, J, 3]` (mm): each axis centred over the J joints, then rows frame-major (row
    f·J + j at (f, joint j)) as `rope.motion_positions`, angles = position · inv_freq in float32.

    Equals the static "4d" table of the same joints up to float32 rounding (the joint mean is a
    differently ordered sum, and XLA's cos/sin are not numpy's)."""
    joints = jnp.asarray(motion_joints, jnp.float32)
    if joints.ndim != 3 or joints.shape[-1] != 3:
        raise ValueError(f"motion_joints must be [B, joints, 3] (mm), got {joints.shape}")
    b, j, _ = joints.shape
    centred = joints - joints.mean(axis=1, keepdims=True)
    xyz = jnp.tile(centred, (1, latent_frames, 1))                               # [B, F·J, 3]
    t = jnp.repeat(jnp.arange(latent_frames, dtype=jnp.float32), j)              # [F·J]
    pos = jnp.concatenate([jnp.broadcast_to(t[None, :, None], (b, t.shape[0], 1)), xyz], -1)
    if len(band_dims) != 4:
        raise ValueError(f"a motion table has 4 bands (t, x, y, z), got {band_dims}")
    angles = jnp.concatenate(
        [pos[..., a:a + 1] * jnp.asarray(rope_inv_freq(d, theta, np.float32))
         for a, d in enumerate(band_dims)], axis=-1)
    return RopeTable(jnp.cos(angles), jnp.sin(angles))


def key_table(motion_pe: str, latent_frames: int, centred_joints, band_dims, theta: float,
              motion_joints=None, *, batch: int, num_joints: int = 24,
              initializing: bool = False) -> RopeTable | None:
    """The key table of any switch: `static_key_table` (host constant; with "4d" the released
    table), or for "dynamic" `dynamic_key_table` of `motion_joints` `[batch, num_joints, 3]`,
    which are then required (zeros while `initializing`, so `init` needs no joints)."""
    if motion_pe != "dynamic":
        return static_key_table(motion_pe, latent_frames, centred_joints, band_dims, theta)
    if motion_joints is None:
        if not initializing:
            raise ValueError('motion_pe="dynamic" needs `motion_joints` [B, 24, 3]: the clip\'s '
                             "first-frame joint positions in mm")
        motion_joints = jnp.zeros((batch, num_joints, 3), jnp.float32)
    if tuple(motion_joints.shape) != (batch, num_joints, 3):
        raise ValueError(f"motion_joints must be [{batch}, {num_joints}, 3] (mm), got "
                         f"{tuple(motion_joints.shape)}")
    return dynamic_key_table(motion_joints, latent_frames, band_dims, theta)


def query_table(motion_pe: str, motion_query_rope: str, frames: int, grid_h: int, grid_w: int,
                vision_band_dims, motion_band_dims, theta: float,
                vision_dtype=np.float32) -> RopeTable | None:
    """The motion attention's query table `[F·h·w, head_dim/2]` by the rule of the module
    docstring; None: queries not rotated. For the released pairing ("vision" with "4d" /
    "dynamic") the caller's own vision table is this table (`released_query`); it is rebuilt
    here the same way (`vision_dtype`: float32 7B, float64 Wan) for completeness."""
    check_switches(motion_pe, motion_query_rope)
    axes = key_axes(motion_pe)
    if axes is None:
        return None
    grid = grid_positions(frames, grid_h, grid_w)                                # (t, h, w)
    if motion_query_rope == "vision" and motion_pe != "time":
        pos = grid if all(axes[:3]) else _zero_axes(grid, axes[:3])
        return rope_table_nd(pos, vision_band_dims, theta, vision_dtype)
    # motion bands at (t, h, w, z = 0); "time" always lands here (t band only, equal widths)
    pos = np.concatenate([grid.astype(np.float32), np.zeros((grid.shape[0], 1), np.float32)],
                         axis=1)
    pos = pos if all(axes) else _zero_axes(pos, axes)
    return rope_table_nd(pos, motion_band_dims, theta, np.float32)


class MotionPositionEmbedding(nn.Module):
    """The "learnable" switch: tokens `[B, F·J, width]` (frame-major) + `frame_embed[f]` +
    `joint_embed[j]`, both N(0, 0.02²) at init, logical axes (`motion_frames` |
    `motion_joints`, `embed`)."""

    num_joints: int
    max_frames: int = DEFAULT_MAX_MOTION_FRAMES
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        b, m, width = tokens.shape
        if m % self.num_joints:
            raise ValueError(f"{m} motion tokens are not frames × {self.num_joints} joints")
        frames = m // self.num_joints
        if frames > self.max_frames:
            raise ValueError(f"{frames} latent motion frames exceed max_motion_frames="
                             f"{self.max_frames} of the learnable motion embedding")
        init = nn.initializers.normal(0.02)
        joint = self.param("joint_embed",
                           nn.with_logical_partitioning(init, ("motion_joints", "embed")),
                           (self.num_joints, width), self.param_dtype)
        frame = self.param("frame_embed",
                           nn.with_logical_partitioning(init, ("motion_frames", "embed")),
                           (self.max_frames, width), self.param_dtype)
        pe = (frame[:frames, None, :] + joint[None, :, :]).reshape(m, width)
        return tokens + pe.astype(tokens.dtype)[None]
