"""The 24-joint SMPL skeleton: joint names, kinematic tree, a neutral rest pose, forward kinematics.

Everything that builds or draws SMPL joint coordinates (procedural motion, SMPL-parameter
ingestion, skeleton rendering) reads the tree from here. Coordinates of the rest pose are in
metres in SMPL's body frame (y up, the body facing +z); `to_camera_mm` places a body-frame motion
in the camera space of NLF output (x right, y down, z depth, millimetres).
"""
from __future__ import annotations

import numpy as np

JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)
NUM_JOINTS = len(JOINT_NAMES)

# Parent of each joint in the SMPL kinematic tree (-1 for the root).
PARENTS = np.array(
    [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21],
    dtype=np.int32,
)

# Bones as (parent, child) pairs, and the side of each joint: -1 right, 0 centre, +1 left.
BONES = tuple((int(PARENTS[j]), j) for j in range(1, NUM_JOINTS))
SIDE = np.array([1 if n.startswith("left") else -1 if n.startswith("right") else 0
                 for n in JOINT_NAMES], dtype=np.int32)

# Joint locations of the gender-neutral SMPL template at rest (metres, body frame).
NEUTRAL_REST_JOINTS = np.array([
    [-0.0018, -0.2233, 0.0282], [0.0695, -0.3141, 0.0239], [-0.0677, -0.3147, 0.0214],
    [-0.0025, -0.1035, 0.0169], [0.1040, -0.6898, 0.0166], [-0.1060, -0.6962, 0.0149],
    [0.0055, 0.0305, 0.0284], [0.0875, -1.0868, -0.0199], [-0.0860, -1.0828, -0.0234],
    [0.0018, 0.0879, 0.0276], [0.1216, -1.1348, 0.1017], [-0.1192, -1.1380, 0.1034],
    [-0.0004, 0.2892, -0.0073], [0.0785, 0.1926, 0.0033], [-0.0734, 0.1912, -0.0004],
    [0.0045, 0.3525, 0.0481], [0.1682, 0.2314, -0.0086], [-0.1605, 0.2285, -0.0114],
    [0.4157, 0.2152, -0.0316], [-0.4165, 0.2133, -0.0379], [0.6548, 0.2214, -0.0363],
    [-0.6522, 0.2185, -0.0419], [0.7315, 0.2121, -0.0519], [-0.7345, 0.2082, -0.0554],
], dtype=np.float64)


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: `[..., 3]` axis-angle vectors to `[..., 3, 3]` rotation matrices."""
    axis_angle = np.asarray(axis_angle, dtype=np.float64)
    angle = np.linalg.norm(axis_angle, axis=-1, keepdims=True)
    axis = axis_angle / np.maximum(angle, 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zeros = np.zeros_like(x)
    cross = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], -1).reshape(axis.shape[:-1] + (3, 3))
    sin, cos = np.sin(angle)[..., None], np.cos(angle)[..., None]
    eye = np.broadcast_to(np.eye(3), cross.shape)
    return eye + sin * cross + (1.0 - cos) * (cross @ cross)


def forward_kinematics(local_rotations: np.ndarray, rest_joints: np.ndarray,
                       root_translation: np.ndarray | None = None,
                       parents: np.ndarray = PARENTS) -> np.ndarray:
    """Posed joint positions from per-joint local rotations.

    Args:
      local_rotations: `[frames, J, 3, 3]` rotation of each joint relative to its parent.
      rest_joints: `[J, 3]` joint positions at rest.
      root_translation: optional `[frames, 3]` added to every joint.
      parents: parent index of each joint, parents before children.
    Returns:
      `[frames, J, 3]` joint positions, in the units of `rest_joints`.
    """
    frames, num_joints = local_rotations.shape[:2]
    offsets = rest_joints - rest_joints[np.maximum(parents, 0)]
    offsets[0] = rest_joints[0]
    global_rot = np.empty((frames, num_joints, 3, 3))
    positions = np.empty((frames, num_joints, 3))
    for j in range(num_joints):
        p = parents[j]
        if p < 0:
            global_rot[:, j] = local_rotations[:, j]
            positions[:, j] = offsets[j]
        else:
            global_rot[:, j] = global_rot[:, p] @ local_rotations[:, j]
            positions[:, j] = positions[:, p] + global_rot[:, p] @ offsets[j]
    if root_translation is not None:
        positions = positions + np.asarray(root_translation)[:, None, :]
    return positions


def to_camera_mm(body_metres: np.ndarray, camera_distance_m: float,
                 lateral_offset_m: np.ndarray | None = None) -> np.ndarray:
    """Body frame (y up, facing +z, metres) to NLF camera space (y down, z depth, millimetres).

    The body faces the camera: a half-turn about x maps y up to y down and +z to -z, then the
    body is pushed `camera_distance_m` along the optical axis (plus an optional lateral offset).
    """
    camera = body_metres * np.array([1.0, -1.0, -1.0])
    camera = camera + np.array([0.0, 0.0, camera_distance_m])
    if lateral_offset_m is not None:
        camera = camera + np.asarray(lateral_offset_m)
    return (camera * 1000.0).astype(np.float32)
