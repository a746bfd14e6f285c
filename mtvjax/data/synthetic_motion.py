"""Procedural SMPL-skeleton motion: the embedded default data source, made without downloads.

Each sequence is one of walk, run, wave, jump, turn or dance, built from periodic joint
rotations by forward kinematics on the 24-joint SMPL tree with the neutral rest skeleton, then
placed in camera space in millimetres like NLF output. Speed, amplitude, body scale, camera
distance and facing vary per sequence. Sequence `i` is a pure function of `(seed, i)`, so the
source is random-access and deterministic like a file-backed one.
"""
from __future__ import annotations

import numpy as np

from mtvjax.data.motion_files import MotionClip
from mtvjax.data.skeleton import (NEUTRAL_REST_JOINTS, NUM_JOINTS, axis_angle_to_matrix,
                                  forward_kinematics, to_camera_mm)

MOTION_KINDS = ("walk", "run", "wave", "jump", "turn", "dance")
FPS = 30.0

J = {name: i for i, name in enumerate((
    "pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle", "r_ankle",
    "spine3", "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head", "l_shoulder",
    "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist", "l_hand", "r_hand"))}


class _Pose:
    """Per-frame axis-angle rotations of every joint plus root translation, in the body frame."""

    def __init__(self, frames: int):
        self.rot = np.zeros((frames, NUM_JOINTS, 3))
        self.root = np.zeros((frames, 3))
        self.yaw = np.zeros(frames)

    def add(self, joint: str, axis: int, angle):
        self.rot[:, J[joint], axis] += angle

    def arms_down(self, lower=np.deg2rad(70.0)):
        self.add("l_shoulder", 2, -lower)
        self.add("r_shoulder", 2, lower)


def _gait(p: _Pose, phase, amp, hip, knee, arm, elbow):
    """Alternating leg and arm swing of walking and running."""
    s = np.sin(phase)
    p.add("l_hip", 0, -hip * amp * s)
    p.add("r_hip", 0, hip * amp * s)
    p.add("l_knee", 0, knee * amp * np.maximum(0.0, np.sin(phase + 1.2)))
    p.add("r_knee", 0, knee * amp * np.maximum(0.0, -np.sin(phase + 1.2)))
    p.add("l_shoulder", 0, arm * amp * s)
    p.add("r_shoulder", 0, -arm * amp * s)
    p.add("l_elbow", 1, -elbow)
    p.add("r_elbow", 1, elbow)


def _walk_or_run(p, t, rng, run: bool):
    cadence = (1.4 if run else 0.9) * rng.uniform(0.8, 1.25)
    amp = rng.uniform(0.7, 1.3)
    phase = 2 * np.pi * cadence * t
    p.arms_down()
    _gait(p, phase, amp, hip=np.deg2rad(45 if run else 25), knee=np.deg2rad(90 if run else 50),
          arm=np.deg2rad(40 if run else 20), elbow=np.deg2rad(80 if run else 15))
    p.add("spine1", 0, np.deg2rad(10 if run else 3))
    p.root[:, 1] = (0.05 if run else 0.02) * amp * np.abs(np.sin(phase))
    # Walk on a circle so the person stays in view: speed / radius sets the turning rate.
    speed, radius = (3.0 if run else 1.2) * cadence / (1.4 if run else 0.9), rng.uniform(1.0, 1.5)
    direction = rng.choice([-1.0, 1.0])
    angle = rng.uniform(0, 2 * np.pi) + direction * speed / radius * t
    p.root[:, 0] = radius * np.cos(angle)
    p.root[:, 2] = radius * np.sin(angle)
    p.yaw += -angle + (0.0 if direction > 0 else np.pi)   # face along the circle's tangent


def _wave(p, t, rng):
    freq, amp = rng.uniform(1.0, 2.0), rng.uniform(0.7, 1.3)
    p.arms_down()
    side = rng.choice(["l", "r"])
    sign = 1.0 if side == "l" else -1.0
    p.add(f"{side}_shoulder", 2, sign * np.deg2rad(150.0))   # lift from down to above shoulder
    p.add(f"{side}_elbow", 2, sign * np.deg2rad(30.0) * amp * np.sin(2 * np.pi * freq * t))
    p.add("spine2", 2, np.deg2rad(4) * amp * np.sin(np.pi * freq * t))


def _jump(p, t, rng):
    freq, amp = rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.3)
    cycle = (freq * t) % 1.0
    crouch = np.where(cycle < 0.4, np.sin(np.pi * cycle / 0.4), 0.0)
    flight = np.where(cycle >= 0.4, np.sin(np.pi * (cycle - 0.4) / 0.6), 0.0)
    p.arms_down(np.deg2rad(70.0) * (1.0 - flight))
    for side, sign in (("l", 1.0), ("r", 1.0)):
        p.add(f"{side}_hip", 0, -sign * np.deg2rad(60) * amp * crouch)
        p.add(f"{side}_knee", 0, np.deg2rad(100) * amp * crouch)
        p.add(f"{side}_ankle", 0, -np.deg2rad(30) * amp * crouch)
    p.root[:, 1] = 0.3 * amp * flight - 0.25 * amp * crouch


def _turn(p, t, rng):
    rate, amp = rng.uniform(0.15, 0.4) * rng.choice([-1.0, 1.0]), rng.uniform(0.7, 1.3)
    p.arms_down()
    _gait(p, 2 * np.pi * 1.2 * t, 0.4 * amp, hip=np.deg2rad(20), knee=np.deg2rad(30),
          arm=np.deg2rad(10), elbow=np.deg2rad(10))
    p.yaw += 2 * np.pi * rate * t


def _dance(p, t, rng):
    f1, f2, amp = rng.uniform(0.8, 1.6), rng.uniform(0.3, 0.7), rng.uniform(0.7, 1.3)
    w1, w2 = 2 * np.pi * f1 * t, 2 * np.pi * f2 * t
    p.arms_down(np.deg2rad(40.0))
    p.add("pelvis", 2, np.deg2rad(8) * amp * np.sin(w1))
    p.add("spine2", 1, np.deg2rad(20) * amp * np.sin(w2))
    p.add("l_shoulder", 2, np.deg2rad(60) * amp * np.sin(w1))
    p.add("r_shoulder", 2, np.deg2rad(60) * amp * np.sin(w1 + np.pi / 2))
    p.add("l_elbow", 1, -np.deg2rad(45) * amp * (1 + np.sin(w2)))
    p.add("r_elbow", 1, np.deg2rad(45) * amp * (1 + np.cos(w2)))
    bounce = np.maximum(0.0, np.sin(2 * w1))
    for side in ("l", "r"):
        p.add(f"{side}_hip", 0, -np.deg2rad(20) * amp * bounce)
        p.add(f"{side}_knee", 0, np.deg2rad(40) * amp * bounce)
    p.add("head", 0, np.deg2rad(10) * amp * np.sin(w1))
    p.root[:, 1] = -0.05 * amp * bounce
    p.root[:, 0] = 0.2 * amp * np.sin(w2)


_BUILDERS = {
    "walk": lambda p, t, rng: _walk_or_run(p, t, rng, run=False),
    "run": lambda p, t, rng: _walk_or_run(p, t, rng, run=True),
    "wave": _wave, "jump": _jump, "turn": _turn, "dance": _dance,
}


def make_motion(kind: str, frames: int, rng: np.random.Generator) -> np.ndarray:
    """One procedural motion `[frames, 24, 3]`, float32 camera-space millimetres."""
    t = np.arange(frames) / FPS
    pose = _Pose(frames)
    _BUILDERS[kind](pose, t, rng)
    if kind not in ("walk", "run"):                                   # locomotion faces its path
        pose.yaw += rng.uniform(-np.pi / 3, np.pi / 3)
    rotations = axis_angle_to_matrix(pose.rot)
    rotations[:, 0] = _yaw_matrix(pose.yaw) @ rotations[:, 0]
    rest = NEUTRAL_REST_JOINTS * rng.uniform(0.85, 1.15)               # body scale
    body = forward_kinematics(rotations, rest, root_translation=pose.root)
    distance = rng.uniform(2.0, 3.5) + (1.5 if kind in ("walk", "run") else 0.0)
    offset = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.3), 0.0])
    return to_camera_mm(body, distance, offset)


def _yaw_matrix(yaw: np.ndarray) -> np.ndarray:
    return axis_angle_to_matrix(np.stack([np.zeros_like(yaw), yaw, np.zeros_like(yaw)], -1))


class SyntheticMotionSource:
    """Random-access source of procedural clips; a Grain data source (`__len__`, `__getitem__`)."""

    def __init__(self, num_sequences: int = 512, frame_range: tuple[int, int] = (160, 320),
                 seed: int = 0):
        self.num_sequences = num_sequences
        self.frame_range = tuple(frame_range)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_sequences

    def _rng_and_frames(self, index: int):
        if not 0 <= index < self.num_sequences:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        return rng, int(rng.integers(self.frame_range[0], self.frame_range[1] + 1))

    def num_frames(self, index: int) -> int:
        return self._rng_and_frames(int(index))[1]

    def __getitem__(self, index: int) -> MotionClip:
        index = int(index)
        rng, frames = self._rng_and_frames(index)
        kind = MOTION_KINDS[index % len(MOTION_KINDS)]
        return MotionClip(make_motion(kind, frames, rng), f"synthetic/{index:05d}-{kind}")
