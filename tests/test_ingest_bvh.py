"""BVH ingestion: the parser and forward kinematics on hand-written files, and the real CMU clips."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from data_pipeline.readers.bvh import (CC_BASE_JOINT_MAP, bvh_world_positions, load_bvh, parse_bvh,
                               read_bvh)
from mtvjax.data.motion_files import MotionFormatError
from mtvjax.data.skeleton import JOINT_NAMES

J = {n: i for i, n in enumerate(JOINT_NAMES)}

# Root with positions and a Z-X-Y rotation order, one child with a Y-X-Z order, one End Site.
TWO_JOINTS = """HIERARCHY
ROOT Hips
{
  OFFSET 1 2 3
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Chest
  {
    OFFSET 0 10 0
    CHANNELS 3 Yrotation Xrotation Zrotation
    End Site
    {
      OFFSET 5 0 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
0 0 0 0 0 0 0 0 0
10 20 30 90 90 0 90 0 0
"""


def test_two_joint_bvh_hand_computed():
    clip = parse_bvh(TWO_JOINTS, source="two.bvh")
    assert clip.names == ["Hips", "Chest", "Chest/End"]
    assert list(clip.parents) == [-1, 0, 1]
    assert clip.fps == 2.0 and clip.num_frames == 2
    pos = bvh_world_positions(clip)
    # Frame 0: no rotation; position channels (all zero) replace the root OFFSET.
    np.testing.assert_allclose(pos[0], [[0, 0, 0], [0, 10, 0], [5, 10, 0]], atol=1e-9)
    # Frame 1: root at (10, 20, 30), R_root = Rz(90) @ Rx(90): Rx(90) takes the chest offset
    # (0, 10, 0) to (0, 0, 10) and Rz(90) keeps it, so the chest is at (10, 20, 40).
    # Chest local = Ry(90); the end offset (5, 0, 0) -> Ry90 (0, 0, -5) -> Rx90 (0, 5, 0)
    # -> Rz90 (-5, 0, 0), so the end is at (5, 20, 40).
    np.testing.assert_allclose(pos[1], [[10, 20, 30], [10, 20, 40], [5, 20, 40]], atol=1e-9)
    # The reversed order (Rx @ Rz) would put the chest elsewhere: the order really is used.
    assert not np.allclose(pos[1, 1], [10 - 10, 20, 30])


@pytest.mark.parametrize("order", ["XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX"])
def test_euler_orders_match_scipy(order):
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(0)
    angles = np.round(rng.uniform(-180, 180, size=(7, 3)), 6)  # as written in the file
    chans = " ".join(f"{a}rotation" for a in order)
    lines = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in angles)
    text = (f"HIERARCHY\nROOT A\n{{\nOFFSET 0 0 0\nCHANNELS 3 {chans}\nJOINT B\n{{\nOFFSET 1 2 3\n"
            f"CHANNELS 0\nEnd Site\n{{\nOFFSET 0 0 0\n}}\n}}\n}}\nMOTION\nFrames: 7\n"
            f"Frame Time: 0.1\n{lines}\n")
    pos = bvh_world_positions(parse_bvh(text), ["B"])[:, 0]
    expected = rotation.from_euler(order, angles, degrees=True).apply([1.0, 2.0, 3.0])
    np.testing.assert_allclose(pos, expected, atol=1e-9)


def test_position_channels_in_any_order_replace_offset():
    text = """HIERARCHY
ROOT R
{
  OFFSET 100 100 100
  CHANNELS 4 Yrotation Zposition Xposition Yposition
  JOINT C
  {
    OFFSET 1 0 0
    CHANNELS 1 Zposition
  }
}
MOTION
Frames: 1
Frame Time: 0.033333
90 3 1 2 7
"""
    clip = parse_bvh(text)
    assert clip.fps == 30.0  # 1 / 0.033333 snapped
    pos = bvh_world_positions(clip)[0]
    np.testing.assert_allclose(pos[0], [1, 2, 3])
    # C: offset (1, 0, 0) with z replaced by 7 -> (1, 0, 7); Ry(90) maps it to (7, 0, -1).
    np.testing.assert_allclose(pos[1], [1 + 7, 2, 3 - 1], atol=1e-9)


@pytest.mark.parametrize("text, fragment", [
    (TWO_JOINTS.replace("10 20 30 90 90 0 90 0 0\n", "10 20 30\n"), "truncated"),
    (TWO_JOINTS.replace("MOTION", "MOTON"), "no MOTION"),
    (TWO_JOINTS.replace("Frames: 2", "Frames: 0"), "no frames"),
    (TWO_JOINTS.replace("Xrotation", "Wrotation"), "unknown channel"),
    (TWO_JOINTS.replace("0 0 0 0 0 0 0 0 0", "0 0 0 0 nan 0 0 0 0"), "NaN"),
    (TWO_JOINTS.replace("OFFSET 0 10 0", "OFFSET 0 x 0"), "not a number"),
    (TWO_JOINTS.replace("}\n}\nMOTION", "}\nMOTION"), "unclosed"),
])
def test_malformed_bvh_names_the_file(text, fragment):
    with pytest.raises(MotionFormatError, match="bad.bvh") as info:
        parse_bvh(text, source="bad.bvh")
    assert fragment in str(info.value)


def test_missing_joint_map_names_file(tmp_path):
    path = tmp_path / "two.bvh"
    path.write_text(TWO_JOINTS)
    with pytest.raises(MotionFormatError, match="two.bvh.*joint_map"):
        load_bvh(path)


# ----- the real CMU files -----

def _cmu_files(cmu_bvh):
    files = sorted(cmu_bvh.glob("*.bvh"))
    assert len(files) == 24
    return files


def test_all_cmu_files_load_upright_and_plausible(cmu_bvh):
    for path in _cmu_files(cmu_bvh):
        clip = read_bvh(path)
        (rec,) = load_bvh(path, target_fps=30.0, camera_distance_m=3.0)
        m = rec.motion
        assert m.dtype == np.float32 and m.ndim == 3 and m.shape[1:] == (24, 3), path
        assert np.all(np.isfinite(m)), path
        assert rec.convention == "mocap" and rec.fps == 30.0 and rec.source_id == str(path)
        # Resampled 60 -> 30 fps: frame count = duration x 30 (within one frame).
        duration = clip.num_frames * clip.frame_time
        assert abs(m.shape[0] - duration * 30.0) <= 1.0, (path, m.shape[0], duration)
        # Upright: the head above the pelvis (smaller camera y) in (nearly) every frame.
        rise = m[:, J["pelvis"], 1] - m[:, J["head"], 1]
        assert rise.mean() > 350 and np.mean(rise > 0) > 0.95, path
        # Placement: first-frame pelvis on the optical axis, 3 m deep.
        np.testing.assert_allclose(m[0, J["pelvis"]], [0, 0, 3000], atol=1e-3)
        # Facing the camera at the start: left hip on image right, toes towards the camera.
        assert m[0, J["left_hip"], 0] > m[0, J["right_hip"], 0], path
        assert m[0, J["left_foot"], 2] + m[0, J["right_foot"], 2] < (
            m[0, J["left_ankle"], 2] + m[0, J["right_ankle"], 2]), path
        # Not mirrored: in every frame the toes point where the body faces (left x up).
        facing = np.cross(m[:, J["left_hip"]] - m[:, J["right_hip"]], [0.0, -1.0, 0.0])
        for toe, ankle in (("left_foot", "left_ankle"), ("right_foot", "right_ankle")):
            ahead = np.einsum("fi,fi->f", m[:, J[toe]] - m[:, J[ankle]], facing) > 0
            assert ahead.mean() > 0.75, (path, toe, ahead.mean())
        # Bone lengths in millimetres.
        for parent, child, lo, hi in [("left_hip", "left_knee", 300, 550),
                                      ("right_hip", "right_knee", 300, 550),
                                      ("left_knee", "left_ankle", 300, 550),
                                      ("left_shoulder", "left_elbow", 200, 400),
                                      ("right_elbow", "right_wrist", 180, 350)]:
            length = np.linalg.norm(m[:, J[child]] - m[:, J[parent]], axis=-1)
            assert lo < length.min() and length.max() < hi, (path, parent, child)
            assert length.std() < 2.0, (path, parent, child)  # a rigid bone


def test_resampling_keeps_every_other_frame(cmu_bvh):
    path = cmu_bvh / "007_01.bvh"
    (full,) = load_bvh(path, target_fps=None)
    (half,) = load_bvh(path, target_fps=30)
    assert full.fps == 60.0 and full.num_frames == read_bvh(path).num_frames
    np.testing.assert_allclose(half.motion, full.motion[::2], atol=1e-3)
    (slow,) = load_bvh(path, target_fps=24)
    assert slow.num_frames == int((full.num_frames - 1) * 24 / 60) + 1
    # 24 fps frame 1 sits at source frame 2.5: halfway between frames 2 and 3.
    np.testing.assert_allclose(slow.motion[1], 0.5 * (full.motion[2] + full.motion[3]), atol=1e-2)


def _reparent(text: str, channels: str, values: str) -> str:
    """Puts the whole rig under a new root with constant rotations (a different world frame)."""
    head, motion = text.split("MOTION", 1)
    head = re.sub(r"ROOT (\S+)", lambda mt: "ROOT World\n{\nOFFSET 0 0 0\nCHANNELS 3 " + channels
                  + "\nJOINT " + mt.group(1), head, count=1) + "}\n"
    lines = motion.splitlines()
    data = [values + " " + line for line in lines[3:] if line.strip()]
    return head + "MOTION" + "\n".join(lines[:3]) + "\n" + "\n".join(data) + "\n"


@pytest.mark.parametrize("channels, values", [
    ("Xrotation Yrotation Zrotation", "90 0 0"),     # y-up rig made z-up
    ("Xrotation Yrotation Zrotation", "90 37 0"),    # z-up and turned 37 degrees about its up axis
    ("Zrotation Yrotation Xrotation", "90 0 0"),     # up along -x
    ("Xrotation Yrotation Zrotation", "180 0 0"),    # upside down (up along -y)
])
@pytest.mark.parametrize("name", ["007_03.bvh", "002_01.bvh"])  # root CC_Base_Hip / RL_BoneRoot
def test_any_up_axis_and_facing_give_the_same_record(cmu_bvh, tmp_path, name, channels, values):
    path = cmu_bvh / name
    (reference,) = load_bvh(path)
    moved = tmp_path / "moved.bvh"
    moved.write_text(_reparent(path.read_text(), channels, values))
    clip = read_bvh(moved)
    assert clip.names[0] == "World"
    (rec,) = load_bvh(moved)
    np.testing.assert_allclose(rec.motion, reference.motion, atol=0.05)


def test_user_joint_map_and_units(cmu_bvh):
    path = cmu_bvh / "002_01.bvh"
    (reference,) = load_bvh(path)
    as_dict = dict(zip(JOINT_NAMES, CC_BASE_JOINT_MAP))
    (rec,) = load_bvh(path, joint_map=as_dict)
    np.testing.assert_array_equal(rec.motion, reference.motion)
    # Same rig read as millimetres: 10x smaller about the pelvis.
    (small,) = load_bvh(path, units="mm", camera_distance_m=3.0)
    centre = np.array([0, 0, 3000], np.float32)
    np.testing.assert_allclose(small.motion - centre, (reference.motion - centre) / 10, atol=0.01)
    bad = dict(as_dict, head="NoSuchJoint")
    with pytest.raises(MotionFormatError, match="002_01.bvh.*NoSuchJoint"):
        load_bvh(path, joint_map=bad)


def test_largest_cmu_file_loads_fast(cmu_bvh):
    path = max(_cmu_files(cmu_bvh), key=lambda p: p.stat().st_size)
    start = time.perf_counter()
    (rec,) = load_bvh(path)
    elapsed = time.perf_counter() - start
    assert rec.num_frames > 500
    assert elapsed < 2.0, f"{path.name} took {elapsed:.2f} s"
