"""Interspatial attention (ISA): conditioning a video DiT on 3-D human tokens.

After "Interspatial Attention for Efficient 4D Human Video Generation": the motion enters the
video transformer as a set of 3-D points per latent frame (SMPL joints, optionally points along
the bones), embedded by a shallow MLP over Fourier features of their coordinates. Both token
sets get an *interspatial* positional encoding of where they are in the image: the 3-D points
projected by the camera to normalised device coordinates plus a depth, the video tokens at their
latent pixel centres with depth 0 (`mtvjax/models/mvdit/camera.py` for all conventions). A symmetric
block then lets the video tokens of each latent frame attend to the 3-D tokens of that frame and
those 3-D tokens attend to the frame's video tokens, followed by LayerNorm + FFN (residual).

Pieces (all usable on their own):

* `latent_frame_points(motion [..., T, 24, 3] mm, points_per_bone, frame_rule)` →
  `[..., F, P, 3]`: motion frames grouped per latent frame as 4DMoT / the ×4 causal video VAE do
  (T = 4(F − 1) + 1; latent frame 0 ↔ motion frame 0, latent frame k ↔ motion frames 4k−3..4k).
  `frame_rule="group"` (default) takes the 4 frames a latent frame covers, flattened sub-frame
  major (P = 4·(24 + 23·points_per_bone)); latent frame 0 covers one frame, whose points are
  repeated 4 times so every latent frame has the same P. `"last"` takes only motion frame 4k
  (P = 24 + 23·points_per_bone).
* `PointEmbed(width)`: `[B, F, P, 3]` mm → `[B, F, P, width]`, MLP over (x, sin, cos of
  2^k·π·x) of the coordinates in metres, plus a learned embedding of the point's index within its
  latent frame (which joint / bone sample / sub-frame it is).
* `ndc_encoding(coords [..., 3], width)`: fixed sin/cos of (x_ndc, y_ndc, depth), width/6
  frequencies per axis from π to π·`pe_max_frequency`, zero-padded to `width`.
* `ISABlock`: the symmetric block (below). `PluckerEmbedding`: optional camera rays per video
  token, off by default.
* `isa_config()`: the ConfigDict section MV-DiT configs embed as `model.isa`; `isa_block(cfg,
  width, num_heads)` builds the block from it.

`ISABlock(width, num_heads, ...)(video_tokens, grid, points3d, camera=None, *,
point_tokens=None, point_mask=None) -> (video_tokens, point_tokens)`:

* `video_tokens [B, F·h·w, D]` in the DiT's order s = f·h·w + i·w + j, `grid = (F, h, w)`;
  `points3d [B, F, P, 3]` mm (camera space for the default camera, world space with explicit
  extrinsics); `camera` a `camera.Camera` (None: the default 55° camera with the grid's aspect
  ratio); `point_tokens [B, F, P, D]` carried from a previous ISA block (None: embedded here by
  the block's own `PointEmbed`); `point_mask [B, F, P]` bool, False = absent point (a frame
  without any valid point leaves its video tokens unchanged: condition dropout).
* Order: (Plücker rays → zero-initialised Linear, added to the video stream, if `plucker`) →
  `hv = LN(video) + PE(video)`, `hp = LN(points) + PE(points)` → in parallel, video ← points and
  points ← video cross-attention (per-head LayerNorm on q, k), each latent frame only with its own
  frame (the block-diagonal mask over frames, realised by folding frames into the batch axis) →
  residual → LN + GELU FFN → residual, on both streams.
* The projections that write into the video stream (the attention's `to_out`, the FFN's `net_2`
  and the Plücker linear) are zero-initialised (`zero_init=True`), so adding ISA blocks to a
  pretrained DiT leaves it unchanged at initialisation. The 3-D stream initialises normally.

Wiring into an MV-DiT (e.g. `mvdit_cogvideox`, ISA after the self-attention of blocks
0, k, 2k, … with k = `config.model.isa.every`)::

    cfg = config.model.isa                                   # isa_config()
    points = latent_frame_points(motion_mm, cfg.points_per_bone, cfg.frame_rule)  # [B, F, P, 3]
    point_tokens = PointEmbed.from_config(cfg, D, name="isa_points")(points)  # once, outside scan
    block = isa_block(cfg, D, num_heads, name="isa")         # inside the scanned body
    x, point_tokens = block(x, (F, h, w), points, camera, point_tokens=point_tokens)

Inside an `nn.scan` the point tokens are part of the carry (shape fixed), `points` / `camera` are
broadcast arguments. Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`) like the
other MV-DiT blocks.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtvjax.data.skeleton import BONES, NUM_JOINTS
from mtvjax.models.mvdit.camera import (DEFAULT_FOV_DEGREES, Camera, align_leading, plucker_rays,
                                  project_to_ndc, video_token_ndc)
from mtvjax.models.layers.attention import AttentionKernel
from mtvjax.models.layers.norms import LayerNorm
from mtvjax.models.mvdit.blocks import (ComputeModule, FeedForward, Linear, MVAttention, logical,
                                        output_init)

TEMPORAL_COMPRESSION = 4
FRAME_RULES = ("group", "last")


def isa_config() -> ml_collections.ConfigDict:
    """Defaults of the ISA section of an MV-DiT config (`config.model.isa`)."""
    return ml_collections.ConfigDict(dict(
        every=2,                   # an ISA block in DiT blocks 0, every, 2·every, ...
        points_per_bone=0,         # points sampled inside each of the 23 bones (0: joints only)
        frame_rule="group",        # group: the 4 motion frames of a latent frame | last: frame 4k
        fov_degrees=DEFAULT_FOV_DEGREES,  # default camera: field of view on the longer side
        depth="log",               # NDC depth: log (ln z/1 m) | metres | none
        num_frequencies=6,         # Fourier features 2^k·π, k < n, of the point coordinates (m)
        mlp_hidden=256,            # hidden width of the point MLP
        pe_max_frequency=64.0,     # NDC encoding frequencies π .. π·this
        num_heads=0,               # 0: the DiT's heads
        mlp_ratio=4,
        qk_norm=True,
        zero_init=True,            # video-stream output projections start at zero
        plucker=False,             # add Plücker camera rays to the video tokens
    ))


# ----------------------------------------------------------------------------------------------
# 3-D points per latent frame
# ----------------------------------------------------------------------------------------------


def latent_frame_count(motion_frames: int, compression: int = TEMPORAL_COMPRESSION) -> int:
    """F = 1 + (T − 1) / 4 latent frames of T motion frames (T must be 4k + 1)."""
    if motion_frames < 1 or (motion_frames - 1) % compression:
        raise ValueError(f"{motion_frames} motion frames: need {compression}k + 1")
    return 1 + (motion_frames - 1) // compression


def latent_frame_indices(latent_frames: int, frame_rule: str = "group",
                         compression: int = TEMPORAL_COMPRESSION) -> np.ndarray:
    """`[F, n]` motion-frame indices per latent frame (n = 4 for "group", 1 for "last")."""
    if frame_rule not in FRAME_RULES:
        raise ValueError(f"unknown frame_rule {frame_rule!r}; expected one of {FRAME_RULES}")
    last = compression * np.arange(latent_frames)
    if frame_rule == "last":
        return last[:, None]
    offsets = np.arange(-(compression - 1), 1)
    return np.maximum(last[:, None] + offsets[None, :], 0)   # latent frame 0: frame 0, repeated


def bone_points(joints, points_per_bone: int):
    """`[..., 24, 3]` joints → `[..., 24 + 23·n, 3]`: the joints, then n evenly spaced interior
    points per bone (parent → child, at k/(n+1), k = 1..n), bone-major in `skeleton.BONES` order."""
    if points_per_bone <= 0:
        return joints
    parents = np.array([p for p, _ in BONES])
    children = np.array([c for _, c in BONES])
    s = jnp.arange(1, points_per_bone + 1, dtype=joints.dtype) / (points_per_bone + 1)
    a, b = joints[..., parents, None, :], joints[..., children, None, :]     # [..., 23, 1, 3]
    inner = a + s[:, None] * (b - a)                                          # [..., 23, n, 3]
    inner = inner.reshape(inner.shape[:-3] + (-1, 3))
    return jnp.concatenate([joints, inner], axis=-2)


def points_per_latent_frame(points_per_bone: int = 0, frame_rule: str = "group",
                            compression: int = TEMPORAL_COMPRESSION) -> int:
    per_frame = NUM_JOINTS + (NUM_JOINTS - 1) * max(points_per_bone, 0)
    return per_frame * (compression if frame_rule == "group" else 1)


def latent_frame_points(motion, points_per_bone: int = 0, frame_rule: str = "group",
                        compression: int = TEMPORAL_COMPRESSION):
    """`[..., T, 24, 3]` joints (mm) → `[..., F, P, 3]` 3-D points of each latent frame
    (module docstring for the rule; P = `points_per_latent_frame(...)`)."""
    motion = jnp.asarray(motion)
    if motion.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"expected [..., T, {NUM_JOINTS}, 3] joints, got {motion.shape}")
    frames = latent_frame_count(motion.shape[-3], compression)
    index = latent_frame_indices(frames, frame_rule, compression)             # [F, n]
    grouped = jnp.take(motion, index.reshape(-1), axis=-3)                    # [..., F·n, 24, 3]
    points = bone_points(grouped, points_per_bone)                            # [..., F·n, Q, 3]
    return points.reshape(motion.shape[:-3] + (frames, -1, 3))


# ----------------------------------------------------------------------------------------------
# Encodings
# ----------------------------------------------------------------------------------------------


def fourier_features(x, num_frequencies: int):
    """`[..., c]` → `[..., c·(1 + 2n)]`: x, sin(2^k·π·x), cos(2^k·π·x) for k < n."""
    freqs = math.pi * 2.0 ** jnp.arange(num_frequencies, dtype=jnp.float32)
    angles = (x[..., None] * freqs).reshape(x.shape[:-1] + (-1,))
    return jnp.concatenate([x, jnp.sin(angles), jnp.cos(angles)], axis=-1)


def ndc_encoding(coords, width: int, max_frequency: float = 64.0):
    """Fixed sinusoidal encoding of `[..., 3]` (x_ndc, y_ndc, depth) → `[..., width]`:
    per axis [sin | cos] of width // 6 frequencies geometric from π to π·max_frequency, the axes
    concatenated, zero-padded to `width`."""
    n = width // 6
    if n < 1:
        raise ValueError(f"width {width} is too small for a 3-axis sin/cos encoding (>= 6)")
    exponent = jnp.arange(n, dtype=jnp.float32) / max(n - 1, 1)
    freqs = math.pi * jnp.float32(max_frequency) ** exponent
    angles = coords.astype(jnp.float32)[..., None] * freqs                    # [..., 3, n]
    enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    enc = enc.reshape(coords.shape[:-1] + (6 * n,))
    return jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, width - 6 * n)])


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class PointEmbed(ComputeModule):
    """3-D points `[..., P, 3]` (mm) → tokens `[..., P, width]`: Linear → GELU → Linear over
    Fourier features of the coordinates in metres, plus a learned per-index embedding."""

    width: int
    num_frequencies: int = 6
    hidden: int = 256
    index_embedding: bool = True

    @classmethod
    def from_config(cls, cfg, width: int, **kwargs) -> "PointEmbed":
        return cls(width, num_frequencies=cfg.num_frequencies, hidden=cfg.mlp_hidden, **kwargs)

    @nn.compact
    def __call__(self, points_mm):
        kw = self.kw
        h = fourier_features(jnp.asarray(points_mm, jnp.float32) / 1000.0, self.num_frequencies)
        h = Linear(self.hidden, (None, "mlp"), name="fc1", **kw)(h)
        h = Linear(self.width, ("mlp", "embed"), name="fc2", **kw)(jax.nn.gelu(h))
        if self.index_embedding:
            table = self.param("point_index", logical(nn.initializers.normal(0.02),
                                                      (None, "embed")),
                               (points_mm.shape[-2], self.width), self.param_dtype)
            h = h + table.astype(h.dtype)
        return h


class PluckerEmbedding(ComputeModule):
    """Plücker rays `[..., h·w, 6]` (`camera.plucker_rays`) → `[..., h·w, width]` by one Linear,
    zero-initialised by default (adding it leaves a pretrained model unchanged)."""

    width: int
    zero_init: bool = True

    @nn.compact
    def __call__(self, rays):
        return Linear(self.width, (None, "embed"), kernel_init=output_init(self.zero_init),
                      name="proj", **self.kw)(rays)


class ISABlock(ComputeModule):
    """The symmetric interspatial-attention block (module docstring for inputs and order).

    Attributes:
      width: model width D. num_heads / head_dim: attention heads (head_dim default D / heads).
      num_frequencies, mlp_hidden: the point MLP (used when no `point_tokens` are passed in).
      fov_degrees: the default camera's field of view on the longer side.
      depth: NDC depth coordinate ("log", "metres", "none"). pe_max_frequency: NDC encoding.
      plucker: add zero-initialised Plücker-ray embeddings to the video tokens.
      zero_init: zero-initialise the projections that write into the video stream.
    """

    width: int
    num_heads: int
    head_dim: int | None = None
    mlp_ratio: int = 4
    num_frequencies: int = 6
    mlp_hidden: int = 256
    fov_degrees: float = DEFAULT_FOV_DEGREES
    depth: str = "log"
    pe_max_frequency: float = 64.0
    plucker: bool = False
    qk_norm: bool = True
    zero_init: bool = True
    norm_eps: float = 1e-6
    attention_implementation: str | AttentionKernel | None = None

    @nn.compact
    def __call__(self, video_tokens, grid: Sequence[int], points3d, camera: Camera | None = None,
                 *, point_tokens=None, point_mask=None):
        frames, grid_h, grid_w = (int(g) for g in grid)
        batch, seq, width = video_tokens.shape
        hw = grid_h * grid_w
        if seq != frames * hw or width != self.width:
            raise ValueError(f"video tokens {video_tokens.shape} do not match grid {grid} and "
                             f"width {self.width}")
        if points3d.ndim != 4 or points3d.shape[:2] != (batch, frames) or points3d.shape[-1] != 3:
            raise ValueError(f"points3d must be [{batch}, {frames}, P, 3], got {points3d.shape}")
        num_points = points3d.shape[2]
        dtype = self.dtype or video_tokens.dtype
        kw = self.kw
        camera = Camera.default((grid_h, grid_w), self.fov_degrees) if camera is None else camera

        if point_tokens is None:
            point_tokens = PointEmbed(width, self.num_frequencies, self.mlp_hidden,
                                      name="point_embed", **kw)(points3d)
        point_tokens = point_tokens.astype(dtype)
        x_v = video_tokens.reshape(batch, frames, hw, width)
        if self.plucker:
            rays = align_leading(plucker_rays(camera, grid_h, grid_w), 2, 2)   # [·, ·, hw, 6]
            x_v = x_v + PluckerEmbedding(width, self.zero_init, name="plucker",
                                         **kw)(rays).astype(x_v.dtype)

        pe_v = ndc_encoding(video_token_ndc((1, grid_h, grid_w)), width, self.pe_max_frequency)
        pe_p = ndc_encoding(project_to_ndc(points3d, camera, self.depth), width,
                            self.pe_max_frequency)
        norm = dict(epsilon=self.norm_eps, logical_axes=("embed",), param_dtype=self.param_dtype)
        h_v = LayerNorm(name="norm_video", **norm)(x_v) + pe_v.astype(dtype)       # [B, F, hw, D]
        h_p = LayerNorm(name="norm_points", **norm)(point_tokens) + pe_p.astype(dtype)
        h_v = h_v.reshape(batch * frames, hw, width)                             # frames → batch
        h_p = h_p.reshape(batch * frames, num_points, width)

        head_dim = self.head_dim or width // self.num_heads
        attn = dict(num_heads=self.num_heads, head_dim=head_dim, qk_norm=self.qk_norm,
                    implementation=self.attention_implementation, **kw)
        key_mask = None
        valid = jnp.ones((batch, frames), bool)
        if point_mask is not None:
            point_mask = jnp.broadcast_to(point_mask, (batch, frames, num_points))
            valid = point_mask.any(axis=-1)
            # A frame without points attends to all of them and discards the result (no fully
            # masked softmax, whose NaN some kernels would also put into the gradient).
            key_mask = (point_mask | ~valid[..., None]).reshape(batch * frames, 1, 1, num_points)
        valid = valid[:, :, None, None]
        d_v = MVAttention(out_zero_init=self.zero_init, name="video_from_points",
                          **attn)(h_v, h_p, mask=key_mask)
        d_p = MVAttention(name="points_from_video", **attn)(h_p, h_v)
        x_v = x_v + jnp.where(valid, d_v.reshape(batch, frames, hw, width), 0)
        x_p = point_tokens + d_p.reshape(batch, frames, num_points, width)

        inner = self.mlp_ratio * width
        d_v = FeedForward(inner, out_zero_init=self.zero_init, name="ff_video", **kw)(
            LayerNorm(name="norm_video_ff", **norm)(x_v))
        x_v = x_v + jnp.where(valid, d_v, 0)
        x_p = x_p + FeedForward(inner, name="ff_points", **kw)(
            LayerNorm(name="norm_points_ff", **norm)(x_p))
        return x_v.reshape(batch, seq, width).astype(video_tokens.dtype), x_p


def isa_block(cfg, width: int, num_heads: int, **kwargs) -> ISABlock:
    """An `ISABlock` from an `isa_config()` section (`cfg.num_heads` 0: `num_heads`)."""
    return ISABlock(width=width, num_heads=int(cfg.num_heads) or num_heads,
                    mlp_ratio=int(cfg.mlp_ratio), num_frequencies=int(cfg.num_frequencies),
                    mlp_hidden=int(cfg.mlp_hidden), fov_degrees=float(cfg.fov_degrees),
                    depth=cfg.depth, pe_max_frequency=float(cfg.pe_max_frequency),
                    plucker=bool(cfg.plucker), qk_norm=bool(cfg.qk_norm),
                    zero_init=bool(cfg.zero_init), **kwargs)
