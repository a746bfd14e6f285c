"""SMPL parameter sequences (AMASS-style `.npz`) turned into camera-space joints.

The motion file holds `poses` `[T, 72+]` axis-angle (the first 72 columns are the 24 SMPL
joints; SMPL-H/SMPL-X files carry hand and face columns after the first 66 body columns, and
columns 66:72 rotate only the leaf joints `left_hand`/`right_hand`, so no joint position depends
on them), `trans` `[T, 3]` metres (optional), `betas` (optional), and `mocap_framerate` (or
`mocap_frame_rate`, optional).

Rest joints come from the user's SMPL model file when given: an `.npz` with `J_regressor`
`[24, V]`, `v_template` `[V, 3]`, `kintree_table` `[2, 24]` and optionally `shapedirs`
`[V, 3, B]` (then the motion file's `betas` shape the body). Nothing is downloaded; without a
model file the neutral template joints of `mtvjax.data.skeleton` are used (betas ignored).

AMASS stores world coordinates with z up, so `up_axis` defaults to 'z'; pass 'y' for data in
SMPL's own y-up frame or 'auto' to detect it. The body is turned to face the camera using the
root orientation of the first frame and placed like the other sources (see `placement`).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from mtvjax.data.load_limits import read_npz
from mtvjax.data.motion_errors import MotionFormatError
from mtvjax.data.resample import resample_linear
from mtvjax.data.skeleton import (NEUTRAL_REST_JOINTS, NUM_JOINTS, PARENTS, axis_angle_to_matrix,
                                  forward_kinematics)

from data_pipeline.readers.ingested_record import MotionRecord, make_record
from data_pipeline.readers.placement import place_in_camera

DEFAULT_FPS = 30.0
FPS_KEYS = ("mocap_framerate", "mocap_frame_rate", "fps")


def _load_npz(path: str) -> dict:
    try:
        return read_npz(path)
    except (FileNotFoundError, MotionFormatError):
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise MotionFormatError(path, f"not a readable .npz without pickled objects ({e})") from None


def is_smpl_params(keys) -> bool:
    """Whether an archive with these entries is SMPL parameters (it has `poses`)."""
    return "poses" in keys


def smpl_rest_joints(model_path: str | os.PathLike | None = None,
                     betas: np.ndarray | None = None) -> np.ndarray:
    """`[24, 3]` rest joints in metres (SMPL body frame, y up), from a model file or the neutral ones."""
    if model_path is None:
        return NEUTRAL_REST_JOINTS.copy()
    source = os.fspath(model_path)
    model = _load_npz(source)
    for key in ("J_regressor", "v_template", "kintree_table"):
        if key not in model:
            raise MotionFormatError(source, f"SMPL model file lacks '{key}' (has {sorted(model)})")
    template = np.asarray(model["v_template"], np.float64)
    regressor = np.asarray(model["J_regressor"], np.float64)
    kintree = np.asarray(model["kintree_table"]).astype(np.int64)
    if template.ndim != 2 or template.shape[1] != 3:
        raise MotionFormatError(source, f"v_template must be [V, 3], got {list(template.shape)}")
    if regressor.shape != (NUM_JOINTS, template.shape[0]):
        raise MotionFormatError(
            source, f"J_regressor must be [{NUM_JOINTS}, {template.shape[0]}] (a 24-joint SMPL model), "
            f"got {list(regressor.shape)}")
    parents = kintree[0] if kintree.ndim == 2 and kintree.shape[0] == 2 else None
    if parents is None or parents.shape[0] != NUM_JOINTS:
        raise MotionFormatError(
            source, f"kintree_table must be [2, {NUM_JOINTS}], got {list(kintree.shape)}")
    parents = np.where((parents < 0) | (parents >= NUM_JOINTS), -1, parents)
    if not np.array_equal(parents, PARENTS):
        raise MotionFormatError(source, "kintree_table is not the 24-joint SMPL tree")
    vertices = template
    if betas is not None and "shapedirs" in model:
        shapedirs = np.asarray(model["shapedirs"], np.float64)
        b = np.asarray(betas, np.float64).reshape(-1)
        n = min(b.size, shapedirs.shape[-1])
        vertices = template + shapedirs[..., :n] @ b[:n]
    return regressor @ vertices


def smpl_joints(poses: np.ndarray, rest_joints: np.ndarray, trans: np.ndarray | None = None) -> np.ndarray:
    """World joints `[T, 24, 3]` (metres) from axis-angle `poses` `[T, 72+]` and `trans` `[T, 3]`."""
    rot = axis_angle_to_matrix(np.asarray(poses, np.float64)[:, :NUM_JOINTS * 3].reshape(-1, NUM_JOINTS, 3))
    return forward_kinematics(rot, np.asarray(rest_joints, np.float64), trans)


def load_smpl_params(path: str | os.PathLike, model_path: str | os.PathLike | None = None,
                     up_axis: str = "z", target_fps: float | None = 30.0,
                     default_fps: float = DEFAULT_FPS, camera_distance_m: float = 3.0,
                     face_camera: bool = True) -> list[MotionRecord]:
    """Loads an AMASS-style SMPL parameter `.npz` as one camera-space record (convention "smpl").

    Args:
      model_path: optional SMPL model `.npz` (see module docstring); None uses the neutral joints.
      up_axis: world up axis of the file: 'z' (AMASS), 'y', signed ('-y'), or 'auto'.
      target_fps: output rate (linear interpolation of joint positions); None keeps the source rate.
      default_fps: source rate when the file states none.
      camera_distance_m: depth of the first frame's pelvis in front of the camera.
      face_camera: turn the body to face the camera (from the first frame's root orientation).
    """
    source = os.fspath(path)
    data = _load_npz(source)
    if "poses" not in data:
        raise MotionFormatError(source, f"SMPL parameters need 'poses' (has {sorted(data)})")
    poses = np.asarray(data["poses"])
    if poses.ndim != 2 or poses.shape[1] < NUM_JOINTS * 3 or not np.issubdtype(poses.dtype, np.number):
        raise MotionFormatError(
            source, f"'poses' must be numbers [frames, >=72], got {poses.dtype} {list(poses.shape)}")
    if poses.shape[0] == 0:
        raise MotionFormatError(source, "'poses' holds no frames")
    trans = data.get("trans")
    if trans is not None:
        trans = np.asarray(trans)
        if trans.shape != (poses.shape[0], 3) or not np.issubdtype(trans.dtype, np.number):
            raise MotionFormatError(
                source, f"'trans' must be [{poses.shape[0]}, 3], got {list(trans.shape)}")
    finite = np.all(np.isfinite(poses[:, :NUM_JOINTS * 3]))
    if not (finite and (trans is None or np.all(np.isfinite(trans)))):
        raise MotionFormatError(source, "'poses' or 'trans' holds NaN or Inf values")
    fps = default_fps
    for key in FPS_KEYS:
        value = np.asarray(data.get(key, ()))
        if value.size == 1 and np.issubdtype(value.dtype, np.number):
            fps = float(value.reshape(()))
            break
    if not (np.isfinite(fps) and fps > 0):
        raise MotionFormatError(source, f"frame rate must be positive, got {fps}")
    rest = smpl_rest_joints(model_path, data.get("betas"))
    world = smpl_joints(poses, rest, trans)
    # SMPL's body faces +z in its own frame; the root rotation takes that into the world.
    forward = axis_angle_to_matrix(np.asarray(poses[0, :3], np.float64)) @ np.array([0.0, 0.0, 1.0])
    motion = place_in_camera(world, 1.0, camera_distance_m, up_axis=up_axis, forward=forward,
                             face_camera=face_camera)
    if target_fps is not None:
        motion = resample_linear(motion, fps, float(target_fps))
        fps = float(target_fps)
    return [make_record(motion, fps, source, convention="smpl")]
