"""Interspatial attention (ISA) as the motion-conditioning path of both MV-DiT families.

`config.model.conditioning` chooses how the motion enters the DiT:

* ``"motion_attention"`` (default, released): 4DMoT tokens through the motion cross-attention
  (7B `attn0`, 17B `motion_attn`); nothing here is used and the parameter trees are unchanged.
* ``"isa"``: no 4DMoT tokens; the model takes the window's raw joints `motion_mm [B, T, 24, 3]`
  (mm, camera space, T = 4·(F − 1) + 1) and conditions on them with the `mtvjax.models.mvdit.isa`
  blocks, which replace the motion cross-attention. ISA sits in blocks 0, k, 2k, …
  (k = `model.isa.every`; the scanned block groups are `every` blocks long), at the motion
  attention's place (7B: after the self-attention; 17B: after the text/image cross-attention).
  The 3-D points (`isa.latent_frame_points`) are embedded once, outside the layer scan
  (`isa_points`, a `PointEmbed`), and the point tokens are carried from ISA block to ISA block.
  Camera: the default pinhole (`isa.fov_degrees` on the longer side) over the video's pixel size
  (latent H·8 × W·8), or an explicit `camera.Camera` passed to the model call.
  Condition dropout / the CFG unconditional branch: the per-example drop flag (`motion_drop`,
  both families) masks all of that example's points, which leaves its video stream unchanged
  by every ISA block (the "no condition" path of `ISABlock`); no learned unconditional tokens.

`ISASettings` is the hashable form of the `model.isa` section (`isa.isa_config()`), usable as a
field of the frozen 17B `WanDiTConfig` and of the 7B linen module; `isa_inputs` builds what the
blocks need from a model call's arguments.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from mtvjax.models.mvdit import isa as I
from mtvjax.models.mvdit.camera import DEFAULT_FOV_DEGREES, Camera

CONDITIONINGS = ("motion_attention", "isa")
VAE_SPATIAL = 8            # pixels per latent pixel of both video VAEs (default camera size)
NUM_JOINTS = 24


@dataclasses.dataclass(frozen=True)
class ISASettings:
    """`model.isa` as a frozen dataclass (fields and defaults = `isa.isa_config()`)."""

    every: int = 2
    points_per_bone: int = 0
    frame_rule: str = "group"
    fov_degrees: float = DEFAULT_FOV_DEGREES
    depth: str = "log"
    num_frequencies: int = 6
    mlp_hidden: int = 256
    pe_max_frequency: float = 64.0
    num_heads: int = 0
    mlp_ratio: int = 4
    qk_norm: bool = True
    zero_init: bool = True
    plucker: bool = False

    def __post_init__(self):
        if int(self.every) < 1:
            raise ValueError(f"isa.every must be >= 1, got {self.every}")
        if self.frame_rule not in I.FRAME_RULES:
            raise ValueError(f"isa.frame_rule {self.frame_rule!r}: expected one of "
                             f"{I.FRAME_RULES}")

    @classmethod
    def create(cls, value: Any = None) -> "ISASettings":
        """From None (defaults), an `ISASettings`, or a mapping / ConfigDict of its fields
        (unknown keys are an error)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        fields = dict(value.to_dict() if hasattr(value, "to_dict") else value)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown model.isa fields {unknown}; known: {sorted(known)}")
        return cls(**fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def points_per_frame(self) -> int:
        return I.points_per_latent_frame(self.points_per_bone, self.frame_rule)


def check_conditioning(conditioning: str) -> str:
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"unknown model.conditioning {conditioning!r}; expected one of "
                         f"{CONDITIONINGS}")
    return conditioning


def settings_of(model_config) -> ISASettings | None:
    """The ISA settings of a `config.model` section when its conditioning is "isa", else None."""
    if check_conditioning(model_config.get("conditioning", "motion_attention")) != "isa":
        return None
    return ISASettings.create(model_config.get("isa"))


class ISAInputs(NamedTuple):
    """What every ISA block of one forward pass reads (broadcast through the layer scans)."""

    points: Any                  # [B, F, P, 3] mm
    camera: Camera
    point_mask: Any | None       # [B, F, P] bool (False: dropped), or None (all present)


def motion_frames(latent_frames: int) -> int:
    return 4 * (latent_frames - 1) + 1


def isa_inputs(settings: ISASettings, motion_mm, drop, batch: int, latent_frames: int,
               latent_size: tuple[int, int], camera: Camera | None = None,
               initializing: bool = False) -> ISAInputs:
    """Points, camera and point mask of a model call.

    `motion_mm [B, T, 24, 3]` with T = 4·(F − 1) + 1 for the F latent frames of the input
    (required; a zero dummy while initialising); `drop` optional `[B]` bool (True: that example's
    points are all masked); `latent_size` (H, W) of the latents: the default camera images
    (8H, 8W) pixels."""
    frames = motion_frames(latent_frames)
    if motion_mm is None:
        if not initializing:
            raise ValueError('model.conditioning="isa" needs motion_mm [B, T, 24, 3] (the '
                             f"window's joints in mm, T = {frames} for {latent_frames} latent "
                             "frames)")
        motion_mm = jnp.zeros((batch, frames, NUM_JOINTS, 3), jnp.float32)
    motion_mm = jnp.asarray(motion_mm, jnp.float32)
    if motion_mm.shape != (batch, frames, NUM_JOINTS, 3):
        raise ValueError(f"motion_mm must be [{batch}, {frames}, {NUM_JOINTS}, 3] (T = 4·(F − 1)"
                         f" + 1 for F = {latent_frames} latent frames), got {motion_mm.shape}")
    points = I.latent_frame_points(motion_mm, settings.points_per_bone, settings.frame_rule)
    if camera is None:
        camera = Camera.default((VAE_SPATIAL * latent_size[0], VAE_SPATIAL * latent_size[1]),
                                settings.fov_degrees)
    mask = None
    if drop is not None:
        keep = ~jnp.asarray(drop, bool).reshape(batch, 1, 1)
        mask = jnp.broadcast_to(keep, points.shape[:3])
    return ISAInputs(points, camera, mask)


def point_embed(settings: ISASettings, width: int, **kwargs) -> I.PointEmbed:
    """The `PointEmbed` applied once outside the layer scan (name it "isa_points")."""
    return I.PointEmbed.from_config(settings, width, **kwargs)


def apply_isa(settings: ISASettings, width: int, num_heads: int, x, grid, inputs: ISAInputs,
              point_tokens, **kwargs):
    """One ISA block (name "isa" in the calling module's scope) → (x, point_tokens)."""
    block = I.isa_block(settings, width, num_heads, name="isa", **kwargs)
    return block(x, grid, inputs.points, inputs.camera, point_tokens=point_tokens,
                 point_mask=inputs.point_mask)


def is_isa_path(path: tuple) -> bool:
    """A parameter path of the ISA conditioning (trained with `optim.trainable="motion"`)."""
    return "isa" in path or "isa_points" in path
