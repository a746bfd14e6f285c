"""Rotary position embeddings (RoPE) for MV-DiT: 1-D bands, 3-D vision tables, 4-D motion tables.

A table is a `RopeTable(cos, sin)`, each `[seq, head_dim // 2]` float32: one column per rotated
pair, bands concatenated along the pair axis. The layout decides which channels form pair i:

* ``"interleaved"``: channels (2i, 2i+1). Both released families use it: the 7B through diffusers'
  repeat-interleaved real tables (docs/reference/mvdit7b.md §4), the 17B through Wan's
  ``view_as_complex(x.reshape(..., -1, 2))`` (docs/reference/mvdit17b.md §5.1, §5.2).
* ``"half_split"``: channels (i, i + head_dim/2) (GPT-NeoX / Llama ``rotate_half``). Not used by any
  released MTVCrafter model; offered for other backbones.

Pair i rotates by angle a: (x0, x1) -> (x0 cos a - x1 sin a, x0 sin a + x1 cos a).

Tables are built on the host with numpy in an explicit dtype, so the JAX x64 flag never changes
them; `apply_rope` computes in (at least) float32 and casts back to the input dtype.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

INTERLEAVED = "interleaved"
HALF_SPLIT = "half_split"
LAYOUTS = (INTERLEAVED, HALF_SPLIT)

DEFAULT_THETA = 10000.0
NUM_JOINTS = 24
WAN_MAX_POSITIONS = 1024  # Wan precomputes 1024 positions per axis (docs/reference/mvdit17b.md §1).


class RopeTable(NamedTuple):
    """cos and sin of the rotation angles, each `[seq, head_dim // 2]` (or `[batch, seq, ...]`)."""

    cos: np.ndarray | jnp.ndarray
    sin: np.ndarray | jnp.ndarray

    @property
    def num_pairs(self) -> int:
        return self.cos.shape[-1]

    @property
    def head_dim(self) -> int:
        return 2 * self.cos.shape[-1]

    @property
    def num_positions(self) -> int:
        return self.cos.shape[-2]

    def astype(self, dtype) -> "RopeTable":
        """Rounds the table, e.g. to bfloat16 as the 7B pipeline does (7B §4 "Precision");
        `apply_rope` still rotates in float32."""
        return RopeTable(self.cos.astype(dtype), self.sin.astype(dtype))


# ----------------------------------------------------------------------------------------------
# 1-D frequencies and n-D band tables
# ----------------------------------------------------------------------------------------------


def rope_inv_freq(dim: int, theta: float = DEFAULT_THETA, dtype=np.float32) -> np.ndarray:
    """`1 / theta**(2k/dim)` for k = 0…dim/2-1, evaluated entirely in `dtype`.

    In float32 this is bit-identical to torch's ``1.0 / (theta ** (torch.arange(0, dim, 2).float()
    / dim))``, which the released motion tables use (7B §4 "Precision", 17B §5.2 "Precision").
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"a RoPE band needs a positive even width, got {dim}")
    dtype = np.dtype(dtype)
    exponent = np.arange(0, dim, 2, dtype=dtype) / dtype.type(dim)
    return (dtype.type(1.0) / (dtype.type(theta) ** exponent)).astype(dtype)


def rope_angles(positions, dim: int, theta: float = DEFAULT_THETA, dtype=np.float32) -> np.ndarray:
    """`[n, dim // 2]` angles `pos * inv_freq`; positions, frequencies and product in `dtype`."""
    pos = np.asarray(positions).astype(dtype).reshape(-1)
    return np.outer(pos, rope_inv_freq(dim, theta, dtype)).astype(dtype)


def rope_table_from_angles(angles: np.ndarray) -> RopeTable:
    """cos/sin of `angles` computed in the angles' dtype, stored as float32."""
    return RopeTable(np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32))


def rope_table_1d(positions, dim: int, theta: float = DEFAULT_THETA,
                  compute_dtype=np.float32) -> RopeTable:
    """A single band of width `dim` (dim/2 pairs) at `positions`."""
    return rope_table_from_angles(rope_angles(positions, dim, theta, compute_dtype))


def rope_table_nd(positions, band_dims: Sequence[int], theta: float = DEFAULT_THETA,
                  compute_dtype=np.float32) -> RopeTable:
    """Concatenated bands: band a has width `band_dims[a]` and rotates with `positions[:, a]`.

    `positions` is `[seq, len(band_dims)]`; the result has `sum(band_dims) // 2` pairs, band 0
    first.
    """
    positions = np.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != len(band_dims):
        raise ValueError(f"positions {positions.shape} do not match {len(band_dims)} bands")
    angles = np.concatenate(
        [rope_angles(positions[:, a], d, theta, compute_dtype) for a, d in enumerate(band_dims)],
        axis=1)
    return rope_table_from_angles(angles)


def concat_rope_tables(*tables: RopeTable) -> RopeTable:
    """Joins tables of equal length along the pair axis (band after band)."""
    return RopeTable(np.concatenate([np.asarray(t.cos) for t in tables], axis=-1),
                     np.concatenate([np.asarray(t.sin) for t in tables], axis=-1))


def pad_rope_table(table: RopeTable, length: int) -> RopeTable:
    """Extends a table to `length` rows with the identity rotation (cos 1, sin 0).

    Wan leaves tokens beyond f·h·w (sequence padding up to seq_len) unrotated (17B §5.1).
    """
    extra = length - table.num_positions
    if extra < 0:
        raise ValueError(f"table has {table.num_positions} rows, more than {length}")
    pad = [(0, 0)] * (np.ndim(table.cos) - 2) + [(0, extra), (0, 0)]
    return RopeTable(np.pad(np.asarray(table.cos), pad, constant_values=1.0),
                     np.pad(np.asarray(table.sin), pad, constant_values=0.0))


# ----------------------------------------------------------------------------------------------
# Conversion to / from the reference's full-width cos/sin tables
# ----------------------------------------------------------------------------------------------


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown RoPE layout {layout!r}; expected one of {LAYOUTS}")


def rope_table_to_full(table: RopeTable,
                       layout: str = INTERLEAVED) -> tuple[np.ndarray, np.ndarray]:
    """Full-width `[seq, head_dim]` cos/sin, as diffusers' and MTVCrafter's tables store them.

    interleaved: each frequency in two adjacent columns (repeat-interleave, 7B §4, 17B §5.2);
    half_split: the pair columns twice, one copy per half.
    """
    _check_layout(layout)
    cos, sin = np.asarray(table.cos), np.asarray(table.sin)
    if layout == INTERLEAVED:
        return np.repeat(cos, 2, axis=-1), np.repeat(sin, 2, axis=-1)
    return np.concatenate([cos, cos], axis=-1), np.concatenate([sin, sin], axis=-1)


def rope_table_from_full(cos, sin, layout: str = INTERLEAVED) -> RopeTable:
    """Inverse of `rope_table_to_full` (e.g. for tables exported from the PyTorch pipeline)."""
    _check_layout(layout)
    cos, sin = np.asarray(cos, np.float32), np.asarray(sin, np.float32)
    if layout == INTERLEAVED:
        return RopeTable(cos[..., 0::2], sin[..., 0::2])
    half = cos.shape[-1] // 2
    return RopeTable(cos[..., :half], sin[..., :half])


# ----------------------------------------------------------------------------------------------
# Application
# ----------------------------------------------------------------------------------------------


def _table_for(x: jnp.ndarray, a) -> jnp.ndarray:
    """Broadcasts a `[seq, P]` or `[batch, seq, P]` table against `[batch, seq, heads, 2P]`."""
    a = jnp.asarray(a)
    if a.ndim == 2:
        return a[None, :, None, :]
    if a.ndim == 3:
        return a[:, :, None, :]
    raise ValueError(f"RoPE table must be [seq, P] or [batch, seq, P], got {a.shape}")


def apply_rope(x: jnp.ndarray, table: RopeTable, layout: str = INTERLEAVED) -> jnp.ndarray:
    """Rotates `x` of `[batch, seq, heads, head_dim]` by `table` (`[seq, head_dim // 2]`).

    Computed in float32 (or float64 if `x` is float64) and cast back to `x.dtype`, as the reference
    does (7B §4 "computed in float32 and cast back"; 17B §5.2). All heads share the rotation.
    """
    _check_layout(layout)
    if x.ndim != 4:
        raise ValueError(f"expected [batch, seq, heads, head_dim], got {x.shape}")
    half = x.shape[-1] // 2
    if x.shape[-1] % 2 or table.cos.shape[-1] != half:
        raise ValueError(f"table has {table.cos.shape[-1]} pairs, head_dim is {x.shape[-1]}")
    if table.cos.shape[-2] != x.shape[1]:
        raise ValueError(f"table has {table.cos.shape[-2]} rows for {x.shape[1]} tokens")
    compute = jnp.promote_types(x.dtype, jnp.float32)
    cos = _table_for(x, table.cos).astype(compute)
    sin = _table_for(x, table.sin).astype(compute)
    xf = x.astype(compute)
    if layout == INTERLEAVED:
        pairs = xf.reshape(*x.shape[:-1], half, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)
    else:
        a, b = xf[..., :half], xf[..., half:]
        out = jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Vision tables (3-D: t, h, w)
# ----------------------------------------------------------------------------------------------


def grid_positions(num_frames: int, height: int, width: int) -> np.ndarray:
    """`[F·H·W, 3]` integer (t, h, w) positions, t slowest and w fastest: the patchified order of
    both families (7B §3.2 s = f·(H/p)(W/p) + i·(W/p) + j; 17B §4 step 2)."""
    grids = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    return np.stack(grids, axis=-1).reshape(-1, 3)


def cogvideox_vision_band_dims(head_dim: int = 64) -> tuple[int, int, int]:
    """7B vision bands [t | h | w] = [d/4 | 3·d/8 | 3·d/8]: 16/24/24 at head_dim 64 (7B §4)."""
    if head_dim % 16:
        raise ValueError(f"7B vision RoPE needs head_dim % 16 == 0, got {head_dim}")
    return head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3


def wan_vision_band_dims(head_dim: int = 128) -> tuple[int, int, int]:
    """Wan vision bands [t | h | w] = [d − 4⌊d/6⌋ | 2⌊d/6⌋ | 2⌊d/6⌋]: 44/42/42 at 128
    (17B §5.1)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    hw = 2 * (head_dim // 6)
    t = head_dim - 2 * hw
    if t % 2 or hw == 0:
        raise ValueError(f"cannot split head_dim {head_dim} into Wan t/h/w bands")
    return t, hw, hw


def vision_rope_table(num_frames: int, height: int, width: int, band_dims: Sequence[int],
                      theta: float = DEFAULT_THETA, compute_dtype=np.float32) -> RopeTable:
    """3-D table over integer (t, h, w) grid positions, rows in patchified (t, h, w) order."""
    return rope_table_nd(grid_positions(num_frames, height, width), band_dims, theta, compute_dtype)


def cogvideox_vision_rope(num_frames: int, grid_h: int, grid_w: int, head_dim: int = 64,
                          theta: float = DEFAULT_THETA) -> RopeTable:
    """MV-DiT-7B vision table (7B §4 "Vision table"): θ = 10000, bands 16/24/24 at head_dim 64,
    plain integer positions (no 45×30 base-crop mapping), float32 angles. `grid_h`, `grid_w` are
    the patch-grid sizes (pixels / 16). [13·32·32, 32] pairs at 49 frames, 512×512. The official
    bf16 pipeline rounds the table to bf16 first: `.astype(jnp.bfloat16)` reproduces that."""
    return vision_rope_table(num_frames, grid_h, grid_w, cogvideox_vision_band_dims(head_dim),
                             theta, np.float32)


def wan_vision_rope(num_frames: int, grid_h: int, grid_w: int, head_dim: int = 128,
                    theta: float = DEFAULT_THETA) -> RopeTable:
    """MV-DiT-17B / Wan 3-D vision table (17B §5.1): θ = 10000, bands 44/42/42 (22/21/21 pairs)
    at head_dim 128, integer positions < 1024. Angles in float64 as Wan does, stored float32."""
    if max(num_frames, grid_h, grid_w) > WAN_MAX_POSITIONS:
        raise ValueError(f"Wan RoPE covers {WAN_MAX_POSITIONS} positions per axis")
    return vision_rope_table(num_frames, grid_h, grid_w, wan_vision_band_dims(head_dim),
                             theta, np.float64)


# ----------------------------------------------------------------------------------------------
# 4-D motion tables (t, x, y, z)
# ----------------------------------------------------------------------------------------------


def centre_joint_positions(mean) -> np.ndarray:
    """Dataset-mean joints `[J, 3]` (mm, camera frame) minus each axis' mean over the joints.

    float32 throughout, and each 1-D column's own numpy `.mean()`, as the released code does:
    `mean(axis=0)` on the 2-D array sums in another order and moves z by ~4e-4 mm (17B §5.2).
    No std normalisation and no rescaling: positions stay in millimetres (7B §4, 17B §5.2).
    """
    mean = np.asarray(mean, dtype=np.float32)
    if mean.ndim != 2 or mean.shape[1] != 3:
        raise ValueError(f"expected [joints, 3] mean positions, got {mean.shape}")
    columns = [np.ascontiguousarray(mean[:, a]) for a in range(3)]
    return np.stack([c - c.mean() for c in columns], axis=1).astype(np.float32)


def motion_positions(latent_frames: int, joint_positions) -> np.ndarray:
    """`[F·J, 4]` float32 (t, x, y, z) per motion token, frame-major: row f·J + j holds t = f and
    joint j's (already centred) position (7B §4 "Flattening is frame-major", 4DMoT "Quantizer")."""
    joints = np.asarray(joint_positions, dtype=np.float32)
    t = np.repeat(np.arange(latent_frames, dtype=np.float32), joints.shape[0])
    xyz = np.tile(joints, (latent_frames, 1))
    return np.concatenate([t[:, None], xyz], axis=1)


def cogvideox_motion_band_dims(head_dim: int = 64) -> tuple[int, int, int, int]:
    """7B motion bands [t | x | y | z] = [d/4 | d/4 | d/4 | d/4] (3·d/4 split equally):
    16/16/16/16 at 64 (7B §1, §4 "Motion table")."""
    if head_dim % 8:
        raise ValueError(f"7B motion RoPE needs head_dim % 8 == 0, got {head_dim}")
    return (head_dim // 4,) * 4


def wan_motion_band_dims(head_dim: int = 128) -> tuple[int, int, int, int]:
    """17B motion bands: t as Wan's vision t band, the rest split in three: 44/28/28/28 at 128
    (17B §5.2)."""
    t = wan_vision_band_dims(head_dim)[0]
    rest = head_dim - t
    if rest % 3 or (rest // 3) % 2:
        raise ValueError(f"cannot split head_dim {head_dim} into Wan motion t/x/y/z bands")
    return t, rest // 3, rest // 3, rest // 3


def motion_rope_table(latent_frames: int, mean, band_dims: Sequence[int],
                      theta: float = DEFAULT_THETA, spatial_scale: float = 1.0) -> RopeTable:
    """4-D table: t band at the latent frame index, x/y/z bands at the centred dataset-mean joint
    positions; float32 positions, frequencies, outer product, cos and sin (7B §4 "Precision",
    17B §5.2 "Precision"). `spatial_scale` (default 1 = released mm) multiplies x/y/z in
    float32."""
    joints = centre_joint_positions(mean)
    if spatial_scale != 1.0:
        joints = (joints * np.float32(spatial_scale)).astype(np.float32)
    return rope_table_nd(motion_positions(latent_frames, joints), band_dims, theta, np.float32)


def cogvideox_motion_rope(latent_frames: int, mean, head_dim: int = 64,
                          theta: float = DEFAULT_THETA) -> RopeTable:
    """MV-DiT-7B motion table, [M = F·24, head_dim/2]; [312, 32] at 13 frames (7B §4). Rounded to
    bf16 by the official bf16 pipeline (`.astype(jnp.bfloat16)`); the 17B keeps float32."""
    return motion_rope_table(latent_frames, mean, cogvideox_motion_band_dims(head_dim), theta)


def wan_motion_rope(latent_frames: int, mean, head_dim: int = 128,
                    theta: float = DEFAULT_THETA) -> RopeTable:
    """MV-DiT-17B motion table, [M = F·24, head_dim/2]; [312, 64] at 13 frames (17B §5.2).

    Indexed by key *slot*; see `Attention(key_head_layout="heads_major")` for the released key
    layout that it rotates."""
    return motion_rope_table(latent_frames, mean, wan_motion_band_dims(head_dim), theta)
