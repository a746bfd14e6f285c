"""Placing world-space joint sequences (mocap, SMPL parameters) in NLF camera space.

World data comes with any up axis and facing. Per clip, `place_in_camera`:
1. finds the up axis (given, or the principal axis along which the head is above the ankles
   on average over the clip),
2. turns the body about that axis so it faces the camera in the first frames (from a given
   forward vector, else from the hips' and shoulders' left-right direction),
3. moves the first frame's pelvis to the body-frame origin,
4. hands the result to `mtvjax.data.skeleton.to_camera_mm` (y up, facing +z, metres in; camera
   mm out), which puts the pelvis on the optical axis `camera_distance_m` in front of the camera.
"""
from __future__ import annotations

import numpy as np

from mtvjax.data.skeleton import JOINT_NAMES, to_camera_mm

_J = {name: i for i, name in enumerate(JOINT_NAMES)}
_AXES = {"x": 0, "y": 1, "z": 2}
# Frames at the start of a clip whose left-right direction sets the facing.
FACING_FRAMES = 5


def up_vector(spec: str) -> np.ndarray:
    """'y', '+z', '-x', ... as a unit vector."""
    s = spec.strip().lower()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s not in _AXES:
        raise ValueError(f"up axis must be one of x, y, z (optionally signed) or 'auto', got {spec!r}")
    v = np.zeros(3)
    v[_AXES[s]] = sign
    return v


def detect_up_axis(joints: np.ndarray) -> np.ndarray:
    """The signed principal axis along which the head is above the ankles on average.

    Args:
      joints: `[frames, 24, 3]` in SMPL joint order, any units.
    Returns:
      a unit vector along +-x, +-y or +-z.
    """
    ankles = 0.5 * (joints[:, _J["left_ankle"]] + joints[:, _J["right_ankle"]])
    rise = (joints[:, _J["head"]] - ankles).mean(axis=0)
    rise = rise + (joints[:, _J["neck"]] - joints[:, _J["pelvis"]]).mean(axis=0)
    axis = int(np.argmax(np.abs(rise)))
    v = np.zeros(3)
    v[axis] = 1.0 if rise[axis] >= 0 else -1.0
    return v


def _minimal_rotation_to_y(up: np.ndarray) -> np.ndarray:
    """Rotation matrix taking unit vector `up` to +y by the smallest turn."""
    y = np.array([0.0, 1.0, 0.0])
    c = float(np.dot(up, y))
    if c < -1.0 + 1e-9:
        return np.diag([1.0, -1.0, -1.0])  # half-turn about x
    v = np.cross(up, y)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1.0 + c)


def _horizontal(v: np.ndarray, up: np.ndarray) -> np.ndarray | None:
    """The unit horizontal part of `v`, or None when `v` is (nearly) vertical or zero."""
    h = v - np.dot(v, up) * up
    n = np.linalg.norm(h)
    if n == 0.0 or n <= 1e-6 * np.linalg.norm(v):
        return None
    return h / n


def body_frame_rotation(joints: np.ndarray, up: np.ndarray, forward: np.ndarray | None = None,
                        face_camera: bool = True) -> np.ndarray:
    """`[3, 3]` rotation R with body = world @ R.T: up -> +y and (if `face_camera`) facing -> +z.

    The facing is `forward` (a world vector) when given and not vertical, else the horizontal
    direction `left x up` where `left` runs from the right to the left hip and shoulder,
    averaged over the first `FACING_FRAMES` frames.
    """
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    if not face_camera:
        return _minimal_rotation_to_y(up)
    fwd = _horizontal(np.asarray(forward, dtype=np.float64), up) if forward is not None else None
    if fwd is not None:
        left = np.cross(up, fwd)
    else:
        head = joints[:FACING_FRAMES]
        lr = (head[:, _J["left_hip"]] - head[:, _J["right_hip"]]
              + head[:, _J["left_shoulder"]] - head[:, _J["right_shoulder"]]).mean(axis=0)
        left = _horizontal(lr, up)
        if left is None:
            return _minimal_rotation_to_y(up)
        fwd = np.cross(left, up)
    return np.stack([left, up, fwd])


def place_in_camera(joints_world: np.ndarray, metres_per_unit: float, camera_distance_m: float = 3.0,
                    up_axis: str = "auto", forward: np.ndarray | None = None,
                    face_camera: bool = True, center: bool = True) -> np.ndarray:
    """World joints `[frames, 24, 3]` (SMPL order) to float32 camera-space millimetres.

    Args:
      joints_world: joint positions in the file's world frame and units.
      metres_per_unit: size of one world unit in metres (0.01 for centimetres).
      camera_distance_m: depth of the first frame's pelvis in front of the camera.
      up_axis: 'auto' (detected per clip) or 'x', 'y', 'z', optionally signed ('-y').
      forward: optional world vector the body faces in the first frame (e.g. from the root
        rotation of SMPL parameters); estimated from the joints when None.
      face_camera: turn the body to face the camera; False keeps the world yaw.
      center: move the first frame's pelvis onto the optical axis.
    """
    joints_world = np.asarray(joints_world, dtype=np.float64)
    up = detect_up_axis(joints_world) if up_axis == "auto" else up_vector(up_axis)
    rot = body_frame_rotation(joints_world, up, forward, face_camera)
    body = joints_world @ rot.T
    if center:
        body = body - body[0, _J["pelvis"]]
    return to_camera_mm(body * metres_per_unit, camera_distance_m)
