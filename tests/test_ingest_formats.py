"""Ingestion of SMPL parameters, NLF pickles and joint arrays; records, errors and folder scans."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from data_pipeline.readers.arrays import load_joint_array
from data_pipeline.readers.ingest import IngestError, load_motion_file, scan_inputs
from data_pipeline.readers.nlf import load_nlf_pickle, video_fps
from data_pipeline.readers.ingested_record import MotionRecord, make_record
from mtvjax.data.motion_files import MotionFormatError
from mtvjax.data.resample import resample_linear
from data_pipeline.readers.smpl_params import load_smpl_params
from mtvjax.data.safe_pickle import UnsafePickleError
from mtvjax.data.skeleton import JOINT_NAMES, NEUTRAL_REST_JOINTS, PARENTS, to_camera_mm

J = {n: i for i, n in enumerate(JOINT_NAMES)}


def _placed(body_m: np.ndarray, distance: float = 3.0) -> np.ndarray:
    """Body-frame metres -> camera mm with the first pelvis at the origin, as the loaders place it."""
    return to_camera_mm(body_m - body_m[0, J["pelvis"]], distance)


def _motion(frames: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(frames, 24, 3)) * 300 + [0, 0, 3000]).astype(np.float32)


# ----- SMPL parameters -----

def _save_params(path, poses, trans=None, **extra):
    arrays = {"poses": poses}
    if trans is not None:
        arrays["trans"] = trans
    np.savez(path, **arrays, **extra)
    return path


def test_zero_pose_is_the_rest_skeleton(tmp_path):
    path = _save_params(tmp_path / "zero.npz", np.zeros((3, 72)), np.zeros((3, 3)))
    (rec,) = load_smpl_params(path, up_axis="y", target_fps=None)
    expected = _placed(np.broadcast_to(NEUTRAL_REST_JOINTS, (3, 24, 3)))
    np.testing.assert_allclose(rec.motion, expected, atol=0.01)
    assert rec.convention == "smpl" and rec.fps == 30.0 and rec.motion.dtype == np.float32
    # AMASS layout: z up, the root turned +90 degrees about x to stand the body up.
    poses = np.zeros((3, 156))
    poses[:, 0] = np.pi / 2
    (amasslike,) = load_motion_file(_save_params(tmp_path / "amass.npz", poses, np.zeros((3, 3))),
                                    target_fps=None)
    np.testing.assert_allclose(amasslike.motion, expected, atol=0.01)


def test_rotating_one_joint_moves_its_children(tmp_path):
    poses = np.zeros((1, 72))
    poses[0, 3 * J["left_elbow"] + 1] = np.pi / 2  # 90 degrees about the body's y axis
    (rec,) = load_smpl_params(_save_params(tmp_path / "elbow.npz", poses), up_axis="y")
    rest = NEUTRAL_REST_JOINTS
    body = rest.copy()
    elbow = rest[J["left_elbow"]]
    for child in ("left_wrist", "left_hand"):
        dx, dy, dz = rest[J[child]] - elbow
        body[J[child]] = elbow + [dz, dy, -dx]  # Ry(90): (x, y, z) -> (z, y, -x)
    np.testing.assert_allclose(rec.motion, _placed(body[None]), atol=0.01)
    moved = np.abs(rec.motion[0] - _placed(rest[None])[0]).max(axis=-1) > 1.0
    assert sorted(np.nonzero(moved)[0]) == [J["left_wrist"], J["left_hand"]]


def _fake_model(path, joints, extra_shape=None, parents=PARENTS):
    vertices = 30
    template = np.random.default_rng(1).normal(size=(vertices, 3))
    template[:24] = joints
    regressor = np.zeros((24, vertices))
    regressor[np.arange(24), np.arange(24)] = 1.0
    kintree = np.stack([np.where(parents < 0, 2**32 - 1, parents), np.arange(24)]).astype(np.uint32)
    arrays = dict(J_regressor=regressor, v_template=template, kintree_table=kintree)
    if extra_shape is not None:
        shapedirs = np.zeros((vertices, 3, 10))
        shapedirs[:24, :, 0] = extra_shape
        arrays["shapedirs"] = shapedirs
    np.savez(path, **arrays)
    return path


def test_fake_smpl_model_is_used(tmp_path):
    model = _fake_model(tmp_path / "model.npz", NEUTRAL_REST_JOINTS * 1.2,
                        extra_shape=NEUTRAL_REST_JOINTS * 0.1)
    motion = _save_params(tmp_path / "m.npz", np.zeros((2, 72)), np.zeros((2, 3)))
    (rec,) = load_smpl_params(motion, model_path=model, up_axis="y")
    np.testing.assert_allclose(rec.motion, _placed(np.stack([NEUTRAL_REST_JOINTS * 1.2] * 2)), atol=0.01)
    shaped = _save_params(tmp_path / "s.npz", np.zeros((2, 72)), np.zeros((2, 3)),
                          betas=np.array([1.0] + [0.0] * 15))
    (rec,) = load_motion_file(shaped, model_path=model, up_axis="y")
    np.testing.assert_allclose(rec.motion, _placed(np.stack([NEUTRAL_REST_JOINTS * 1.3] * 2)), atol=0.01)
    wrong_tree = PARENTS.copy()
    wrong_tree[23] = 22
    bad = _fake_model(tmp_path / "bad_model.npz", NEUTRAL_REST_JOINTS, parents=wrong_tree)
    with pytest.raises(MotionFormatError, match="bad_model.npz"):
        load_smpl_params(motion, model_path=bad)


def test_smpl_translation_and_frame_rate(tmp_path):
    frames = 121
    poses = np.zeros((frames, 72))
    poses[:, 0] = np.pi / 2  # standing in a z-up world, facing world -y; its left is world +x
    trans = np.zeros((frames, 3))
    trans[:, 0] = np.linspace(0.0, 1.2, frames)  # walks 1.2 m to its left over one second
    path = _save_params(tmp_path / "walk.npz", poses, trans, mocap_framerate=np.array(120.0))
    (rec,) = load_smpl_params(path, target_fps=30)
    assert rec.fps == 30.0 and rec.num_frames == 31
    np.testing.assert_allclose(rec.motion[:, J["pelvis"], 0], np.linspace(0, 1200, 31), atol=0.05)
    np.testing.assert_allclose(rec.motion[:, J["pelvis"], 1:], [[0, 3000]] * 31, atol=0.01)
    bad = _save_params(tmp_path / "nan.npz", np.full((4, 72), np.nan))
    with pytest.raises(MotionFormatError, match="nan.npz"):
        load_motion_file(bad)


# ----- NLF / MTVCrafter pickles -----

def test_mtvcrafter_sample(mtvcrafter_sample):
    path = mtvcrafter_sample / "sampled_data.pkl"
    records = load_motion_file(path)
    assert [r.num_frames for r in records] == [127, 584, 653]
    for i, rec in enumerate(records):
        assert rec.source_id == f"{path}#{i}"
        assert os.path.isfile(rec.video_path)
        assert rec.motion.dtype == np.float32 and rec.convention == "smpl"
        np.testing.assert_array_equal(rec.frame_indices, np.arange(rec.num_frames))
        assert rec.fps == video_fps(rec.video_path) > 0
    assert records[0].fps == 30.0
    # The poses are passed through untouched: already camera-space millimetres.
    first = records[0].motion
    assert 500 < first[:, J["pelvis"], 2].mean() < 5000
    assert (first[:, J["head"], 1] < first[:, J["pelvis"], 1]).all()
    (fixed,) = load_nlf_pickle(path, fps=25.0)[:1]
    assert fixed.fps == 25.0


def _raw_nlf(per_frame, video="clips/v.mp4"):
    return {"video_path": video, "video_length": len(per_frame), "video_width": 64,
            "video_height": 64, "poses": {"joints3d_nonparam": per_frame}}


def test_raw_per_frame_nlf(tmp_path):
    people = _motion(5)
    per_frame = [
        np.stack([people[0], people[0] + 1000]),   # two people: the first is taken
        [people[1][None]],                         # wrapped in a batch list of one image
        people[2][None],
        people[3][None].astype(np.float64),
        people[4],                                 # a bare [24, 3]
    ]
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(_raw_nlf(per_frame)))
    (rec,) = load_motion_file(path)
    np.testing.assert_allclose(rec.motion, people)
    assert rec.fps == 30.0  # the video does not exist: the default rate
    assert rec.video_path == str(tmp_path / "clips" / "v.mp4")
    np.testing.assert_array_equal(rec.frame_indices, np.arange(5))

    per_frame[2] = np.zeros((0, 24, 3))  # nobody detected in frame 2
    per_frame[3] = None
    path.write_bytes(pickle.dumps(_raw_nlf(per_frame)))
    with pytest.raises(MotionFormatError, match="raw.pkl.*no person detected in 2 of 5"):
        load_motion_file(path)
    first, second = load_motion_file(path, missing="split", fps=12.5)
    np.testing.assert_array_equal(first.frame_indices, [0, 1])
    np.testing.assert_array_equal(second.frame_indices, [4])
    np.testing.assert_allclose(second.motion, people[4:])
    assert first.source_id.endswith("raw.pkl#0") and second.fps == 12.5


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([{"pose": Evil()}]))
    with pytest.raises(UnsafePickleError, match="evil.pkl.*os|evil.pkl.*posix|evil.pkl.*nt"):
        load_motion_file(path)
    records, errors = scan_inputs([tmp_path])
    assert records == [] and len(errors) == 1 and errors[0].path == str(path)
    assert "refusing" in errors[0].message
    assert not marker.exists()


# ----- joint arrays -----

def test_npy_and_npz_joint_arrays(tmp_path):
    motion = _motion(6)
    np.save(tmp_path / "a.npy", motion)
    (rec,) = load_motion_file(tmp_path / "a.npy")
    np.testing.assert_array_equal(rec.motion, motion)
    assert rec.fps == 30.0 and rec.frame_indices is None and rec.convention == "smpl"
    conf = np.full((6, 24), 0.5, np.float32)
    np.savez(tmp_path / "b.npz", joints=motion.astype(np.float64), fps=np.array(24.0), confidence=conf)
    (rec,) = load_motion_file(tmp_path / "b.npz")
    assert rec.motion.dtype == np.float32 and rec.fps == 24.0
    np.testing.assert_array_equal(rec.confidence, conf)
    np.savez(tmp_path / "c.npz", whatever=motion)
    assert load_motion_file(tmp_path / "c.npz", fps=10)[0].fps == 10.0
    np.savez(tmp_path / "d.npz", one=motion, two=motion)
    with pytest.raises(MotionFormatError, match="d.npz.*no motion array"):
        load_joint_array(tmp_path / "d.npz")
    np.save(tmp_path / "obj.npy", np.array([motion, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(MotionFormatError, match="obj.npy"):
        load_motion_file(tmp_path / "obj.npy")


@pytest.mark.parametrize("bad, fragment", [
    (np.full((4, 24, 3), np.nan, np.float32), "NaN"),
    (np.full((4, 24, 3), np.inf, np.float32), "Inf"),
    (np.zeros((4, 23, 3), np.float32), "shape"),
    (np.zeros((24, 3), np.float32), "shape"),
    (np.full((4, 24, 3), "x"), "dtype"),  # integer motion is accepted (converted to float32)
    (np.zeros((0, 24, 3), np.float32), "empty"),
])
def test_bad_motion_names_the_file(tmp_path, bad, fragment):
    path = tmp_path / "broken_motion.npy"
    np.save(path, bad)
    with pytest.raises(MotionFormatError, match="broken_motion.npy") as info:
        load_motion_file(path)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_record_validate_and_errors():
    rec = make_record(_motion(3).astype(np.float64), 30, "x.npy", frame_indices=[0, 1, 2])
    assert rec.motion.dtype == np.float32 and rec.frame_indices.dtype == np.int64
    with pytest.raises(MotionFormatError, match="x.npy.*frame_indices"):
        make_record(_motion(3), 30, "x.npy", frame_indices=[0, 1])
    with pytest.raises(MotionFormatError, match="x.npy.*convention"):
        make_record(_motion(3), 30, "x.npy", convention="bvh")
    with pytest.raises(MotionFormatError, match="x.npy.*fps"):
        MotionRecord(_motion(3), -1.0, "x.npy").validate()
    with pytest.raises(MotionFormatError, match="x.npy.*confidence"):
        make_record(_motion(3), 30, "x.npy", confidence=np.ones((3, 23)))


def test_unknown_suffix_and_option(tmp_path):
    path = tmp_path / "motion.txt"
    path.write_text("1 2 3")
    with pytest.raises(MotionFormatError, match="motion.txt.*unsupported"):
        load_motion_file(path)
    np.save(tmp_path / "a.npy", _motion(2))
    with pytest.raises(TypeError, match="target_fsp"):
        load_motion_file(tmp_path / "a.npy", target_fsp=30)


def test_scan_inputs_reports_and_skips_bad_files(tmp_path):
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    np.save(folder / "good.npy", _motion(4))
    np.save(folder / "nested" / "bad.npy", np.full((4, 24, 3), np.nan, np.float32))
    (folder / "nested" / "clip.pkl").write_bytes(pickle.dumps([{"pose": _motion(5), "video_path": "x.mp4"},
                                                               {"pose": _motion(7)}]))
    (folder / "notes.txt").write_text("not motion")  # ignored inside folders
    (folder / "garbage.bvh").write_text("HIERARCHY\nROOT\n")
    records, errors = scan_inputs([folder], fps=20)
    assert [r.num_frames for r in records] == [4, 5, 7]
    assert all(r.fps == 20.0 for r in records)
    assert [e.path for e in errors] == [str(folder / "garbage.bvh"), str(folder / "nested" / "bad.npy")]
    assert all(isinstance(e, IngestError) and e.path in e.message for e in errors)
    missing = tmp_path / "missing.npy"
    records, errors = scan_inputs([folder / "good.npy", missing, str(folder / "good.npy")])
    assert len(records) == 1 and [e.path for e in errors] == [str(missing)]


def test_resample_linear():
    ramp = np.arange(11, dtype=np.float64)[:, None] * [1.0, 2.0]  # 1 s at 10 fps
    out = resample_linear(ramp, 10, 25)
    assert out.shape == (26, 2)
    np.testing.assert_allclose(out[:, 0], np.linspace(0, 10, 26))
    np.testing.assert_array_equal(resample_linear(ramp, 10, 5), ramp[::2])
    assert resample_linear(ramp, 10, 10) is ramp
