"""BVH motion capture: parsing, forward kinematics, and conversion to SMPL-ordered camera-space joints.

Conventions read from the file, per joint: the OFFSET is the joint's position in its parent's
frame at rest; position channels, when present, replace the matching OFFSET components in each
frame; rotation channels are Euler angles in degrees applied in the order listed, so
`Zrotation Xrotation Yrotation` gives `R = Rz @ Rx @ Ry` (intrinsic rotations, the first listed
outermost). A joint's world position is `parent_position + parent_world_rotation @ translation`.

`load_bvh` then picks the 24 SMPL joints by name (the CC_Base rig of the shared CMU files by
default), finds each clip's up axis, turns the body to face the camera, converts units to
millimetres and resamples to a target frame rate. The joints are the rig's joints, not SMPL's
regressed ones, so the records carry `convention="mocap"`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping, Sequence

import numpy as np

from mtvjax.data.motion_errors import MotionFormatError
from mtvjax.data.resample import resample_linear, snap_fps
from mtvjax.data.skeleton import JOINT_NAMES, NUM_JOINTS

from data_pipeline.readers.ingested_record import MotionRecord, make_record
from data_pipeline.readers.placement import place_in_camera

# The Reallusion CC_Base rig joints standing in for the 24 SMPL joints, in SMPL order.
CC_BASE_JOINT_MAP = (
    "CC_Base_Hip", "CC_Base_L_Thigh", "CC_Base_R_Thigh", "CC_Base_Waist", "CC_Base_L_Calf",
    "CC_Base_R_Calf", "CC_Base_Spine01", "CC_Base_L_Foot", "CC_Base_R_Foot", "CC_Base_Spine02",
    "CC_Base_L_ToeBase", "CC_Base_R_ToeBase", "CC_Base_NeckTwist01", "CC_Base_L_Clavicle",
    "CC_Base_R_Clavicle", "CC_Base_Head", "CC_Base_L_Upperarm", "CC_Base_R_Upperarm",
    "CC_Base_L_Forearm", "CC_Base_R_Forearm", "CC_Base_L_Hand", "CC_Base_R_Hand",
    "CC_Base_L_Mid1", "CC_Base_R_Mid1",
)

UNITS_IN_METRES = {"mm": 0.001, "cm": 0.01, "m": 1.0, "in": 0.0254}
_CHANNEL_RE = re.compile(r"^([xyz])(position|rotation)$", re.IGNORECASE)


@dataclasses.dataclass
class BvhClip:
    """A parsed BVH file.

    Attributes:
      names: joint names in file order (parents first); End Sites are named `<parent>/End`.
      parents: `[J]` parent index, -1 for roots.
      offsets: `[J, 3]` rest offsets from the parent.
      channels: per joint, its channel names as written (empty for End Sites).
      channel_start: `[J]` column of each joint's first channel in `frames`.
      frame_time: seconds per frame.
      frames: `[frames, channels]` float64 channel values.
      source: the file (or a label) the clip came from.
    """

    names: list
    parents: np.ndarray
    offsets: np.ndarray
    channels: list
    channel_start: np.ndarray
    frame_time: float
    frames: np.ndarray
    source: str = "<bvh>"

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def fps(self) -> float:
        return snap_fps(1.0 / self.frame_time)

    def index(self, name: str) -> int:
        return self.names.index(name)


class _Tokens:
    def __init__(self, text: str, source: str):
        self.items = text.split()
        self.pos = 0
        self.source = source

    def next(self, what: str) -> str:
        if self.pos >= len(self.items):
            raise MotionFormatError(self.source, f"BVH hierarchy ends early, expected {what}")
        tok = self.items[self.pos]
        self.pos += 1
        return tok

    def expect(self, literal: str):
        tok = self.next(repr(literal))
        if tok != literal:
            raise MotionFormatError(self.source, f"BVH hierarchy: expected {literal!r}, found {tok!r}")

    def number(self, what: str) -> float:
        tok = self.next(what)
        try:
            return float(tok)
        except ValueError:
            raise MotionFormatError(
                self.source, f"BVH hierarchy: {what} is not a number: {tok!r}") from None


def _parse_hierarchy(text: str, source: str):
    toks = _Tokens(text, source)
    toks.expect("HIERARCHY")
    names, parents, offsets, channels = [], [], [], []
    # Stack of joint indices whose '{' is open; -2 marks an open End Site block.
    stack: list[int] = []
    pending: tuple[str, int] | None = None  # a ROOT/JOINT/End Site awaiting its '{'
    while toks.pos < len(toks.items):
        tok = toks.next("a keyword")
        upper = tok.upper()
        if upper in ("ROOT", "JOINT"):
            if upper == "JOINT" and not stack:
                raise MotionFormatError(source, "BVH hierarchy: JOINT outside any ROOT")
            if upper == "ROOT" and stack:
                raise MotionFormatError(source, "BVH hierarchy: ROOT inside another joint")
            pending = (toks.next("a joint name"), stack[-1] if stack else -1)
        elif upper == "END":
            toks.next("'Site'")
            if not stack:
                raise MotionFormatError(source, "BVH hierarchy: End Site outside a joint")
            pending = (f"{names[stack[-1]]}/End", stack[-1])
        elif tok == "{":
            if pending is None:
                raise MotionFormatError(source, "BVH hierarchy: '{' without a joint")
            names.append(pending[0])
            parents.append(pending[1])
            offsets.append(None)
            channels.append(())
            stack.append(len(names) - 1)
            pending = None
        elif tok == "}":
            if not stack:
                raise MotionFormatError(source, "BVH hierarchy: unbalanced '}'")
            j = stack.pop()
            if offsets[j] is None:
                raise MotionFormatError(source, f"BVH hierarchy: joint {names[j]!r} has no OFFSET")
        elif upper == "OFFSET":
            if not stack:
                raise MotionFormatError(source, "BVH hierarchy: OFFSET outside a joint")
            offsets[stack[-1]] = [toks.number("OFFSET") for _ in range(3)]
        elif upper == "CHANNELS":
            if not stack:
                raise MotionFormatError(source, "BVH hierarchy: CHANNELS outside a joint")
            count_tok = toks.next("channel count")
            if not count_tok.isdigit():
                raise MotionFormatError(source, f"BVH hierarchy: bad channel count {count_tok!r}")
            chans = tuple(toks.next("a channel name") for _ in range(int(count_tok)))
            for c in chans:
                if not _CHANNEL_RE.match(c):
                    raise MotionFormatError(
                        source, f"BVH hierarchy: joint {names[stack[-1]]!r} has unknown channel {c!r}")
            if names[stack[-1]].endswith("/End") and chans:
                raise MotionFormatError(source, "BVH hierarchy: End Site with channels")
            channels[stack[-1]] = chans
        else:
            raise MotionFormatError(source, f"BVH hierarchy: unexpected token {tok!r}")
    if stack or pending is not None:
        raise MotionFormatError(source, "BVH hierarchy: unclosed '{'")
    if not names:
        raise MotionFormatError(source, "BVH hierarchy holds no joints")
    return names, np.array(parents, np.int64), np.array(offsets, np.float64), channels


def parse_bvh(text: str, source: str = "<bvh>") -> BvhClip:
    """Parses BVH text; raises `MotionFormatError` naming `source` on malformed content."""
    match = re.search(r"^\s*MOTION\s*$", text, re.MULTILINE)
    if match is None:
        raise MotionFormatError(source, "not a BVH file: no MOTION section")
    names, parents, offsets, channels = _parse_hierarchy(text[:match.start()], source)
    counts = np.array([len(c) for c in channels], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    total = int(counts.sum())

    body = text[match.end():]
    frames_m = re.search(r"Frames:\s*(\S+)", body)
    time_m = re.search(r"Frame\s+Time:\s*(\S+)", body)
    if frames_m is None or time_m is None:
        raise MotionFormatError(source, "BVH MOTION section lacks 'Frames:' or 'Frame Time:'")
    try:
        num_frames = int(frames_m.group(1))
        frame_time = float(time_m.group(1))
    except ValueError:
        raise MotionFormatError(
            source, "BVH MOTION section: bad 'Frames:' or 'Frame Time:' value") from None
    if num_frames <= 0:
        raise MotionFormatError(source, f"BVH file holds no frames (Frames: {num_frames})")
    if not (np.isfinite(frame_time) and frame_time > 0):
        raise MotionFormatError(source, f"BVH Frame Time must be positive, got {frame_time}")
    try:
        values = np.array(body[max(frames_m.end(), time_m.end()):].split(), dtype=np.float64)
    except ValueError as e:
        raise MotionFormatError(source, f"BVH MOTION data holds a non-number ({e})") from None
    if total == 0:
        raise MotionFormatError(source, "BVH hierarchy declares no channels")
    if values.size != num_frames * total:
        raise MotionFormatError(
            source, f"BVH MOTION data holds {values.size} values; {num_frames} frames x {total} "
            f"channels need {num_frames * total} (truncated or inconsistent file)")
    frames = values.reshape(num_frames, total)
    if not np.all(np.isfinite(frames)):
        raise MotionFormatError(source, "BVH MOTION data holds NaN or Inf values")
    return BvhClip(names, parents, offsets, channels, starts, frame_time, frames, source)


def read_bvh(path: str | os.PathLike) -> BvhClip:
    """Reads and parses a BVH file."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return parse_bvh(f.read(), source=os.fspath(path))


def _axis_rotations(axis: str, radians: np.ndarray) -> np.ndarray:
    """`[frames, 3, 3]` rotations by `radians` about the x, y or z axis."""
    c, s = np.cos(radians), np.sin(radians)
    out = np.zeros(radians.shape + (3, 3))
    i = "xyz".index(axis)
    j, k = (i + 1) % 3, (i + 2) % 3
    out[..., i, i] = 1.0
    out[..., j, j] = c
    out[..., k, k] = c
    out[..., j, k] = -s
    out[..., k, j] = s
    return out


def _local_transform(clip: BvhClip, j: int):
    """Per-frame local rotation `[F, 3, 3]` (or None) and translation (`[3]` or `[F, 3]`)."""
    rot = None
    trans = clip.offsets[j]
    positions = {}
    for n, chan in enumerate(clip.channels[j]):
        axis, kind = _CHANNEL_RE.match(chan).groups()
        column = clip.frames[:, clip.channel_start[j] + n]
        if kind.lower() == "position":
            positions["xyz".index(axis.lower())] = column
        else:
            r = _axis_rotations(axis.lower(), np.deg2rad(column))
            rot = r if rot is None else rot @ r
    if positions:
        trans = np.broadcast_to(trans, (clip.num_frames, 3)).copy()
        for axis, column in positions.items():
            trans[:, axis] = column
    return rot, trans


def bvh_world_positions(clip: BvhClip, joints: Sequence[str | int] | None = None) -> np.ndarray:
    """World positions `[frames, len(joints), 3]` of the given joints (all joints when None).

    Only the requested joints and their ancestors are computed.
    """
    if joints is None:
        wanted = list(range(len(clip.names)))
    else:
        wanted = [j if isinstance(j, (int, np.integer)) else clip.index(j) for j in joints]
    needed = np.zeros(len(clip.names), bool)
    for j in wanted:
        while j >= 0 and not needed[j]:
            needed[j] = True
            j = int(clip.parents[j])
    frames = clip.num_frames
    world_rot: dict[int, np.ndarray | None] = {}
    world_pos: dict[int, np.ndarray] = {}
    for j in np.nonzero(needed)[0]:
        rot, trans = _local_transform(clip, j)
        p = int(clip.parents[j])
        if p < 0:
            pos = np.broadcast_to(trans, (frames, 3))
            world = rot
        else:
            prot = world_rot[p]
            if prot is None:
                step = trans
            elif np.ndim(trans) == 2:
                step = np.einsum("fij,fj->fi", prot, trans)
            else:
                step = prot @ trans
            pos = world_pos[p] + step
            world = prot if rot is None else (rot if prot is None else prot @ rot)
        world_rot[j] = world
        world_pos[j] = pos
    return np.stack([np.broadcast_to(world_pos[j], (frames, 3)) for j in wanted], axis=1)


def resolve_joint_map(clip: BvhClip, joint_map: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    """BVH joint names for the 24 SMPL joints in SMPL order, checked against the clip."""
    if joint_map is None:
        names = list(CC_BASE_JOINT_MAP)
    elif isinstance(joint_map, Mapping):
        missing = [n for n in JOINT_NAMES if n not in joint_map]
        if missing:
            raise MotionFormatError(clip.source, f"joint_map lacks SMPL joints {missing}")
        names = [joint_map[n] for n in JOINT_NAMES]
    else:
        names = list(joint_map)
        if len(names) != NUM_JOINTS:
            raise MotionFormatError(
                clip.source, f"joint_map must name {NUM_JOINTS} joints in SMPL order, got {len(names)}")
    absent = [n for n in names if n not in clip.names]
    if absent:
        raise MotionFormatError(
            clip.source, f"BVH rig lacks joints {absent} of the "
            f"{'CC_Base' if joint_map is None else 'given'} joint map; pass joint_map= naming the "
            "rig's joint for each SMPL joint")
    return names


def _metres_per_unit(units: str | float, source: str) -> float:
    if isinstance(units, str):
        if units not in UNITS_IN_METRES:
            raise MotionFormatError(source, f"unknown units {units!r}; use one of {list(UNITS_IN_METRES)} "
                                    "or metres per unit as a number")
        return UNITS_IN_METRES[units]
    return float(units)


def bvh_to_record(clip: BvhClip, joint_map=None, target_fps: float | None = 30.0,
                  camera_distance_m: float = 3.0, up_axis: str = "auto", units: str | float = "cm",
                  face_camera: bool = True) -> MotionRecord:
    """Converts a parsed clip to a camera-space record (see `load_bvh`)."""
    names = resolve_joint_map(clip, joint_map)
    world = bvh_world_positions(clip, names)
    motion = place_in_camera(world, _metres_per_unit(units, clip.source), camera_distance_m,
                             up_axis=up_axis, face_camera=face_camera)
    fps = clip.fps
    if target_fps is not None:
        motion = resample_linear(motion, fps, float(target_fps))
        fps = float(target_fps)
    return make_record(motion, fps, clip.source, convention="mocap")


def load_bvh(path: str | os.PathLike, joint_map: Mapping[str, str] | Sequence[str] | None = None,
             target_fps: float | None = 30.0, camera_distance_m: float = 3.0, up_axis: str = "auto",
             units: str | float = "cm", face_camera: bool = True) -> list[MotionRecord]:
    """Loads a BVH file as one camera-space motion record.

    Args:
      path: the .bvh file.
      joint_map: BVH joint names for the SMPL joints: a dict {smpl_name: bvh_name} or 24 names in
        SMPL order; None uses the CC_Base rig map of the shared CMU files.
      target_fps: output frame rate (linear interpolation); None keeps the file's rate.
      camera_distance_m: depth of the first frame's pelvis in front of the camera.
      up_axis: 'auto' detects the clip's up axis; or 'x', 'y', 'z', optionally signed.
      units: the file's length unit ('cm' for the CMU files), or metres per unit.
      face_camera: turn the body to face the camera in the first frames.
    Returns:
      `[record]`, convention "mocap", no video.
    """
    clip = read_bvh(path)
    return [bvh_to_record(clip, joint_map, target_fps, camera_distance_m, up_axis, units, face_camera)]
