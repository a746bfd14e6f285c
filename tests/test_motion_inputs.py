"""Reading users' motion: restricted unpickler, validation errors, the procedural default source."""
import pickle

import numpy as np
import pytest

from mtvjax.data import skeleton
from mtvjax.data.motion_files import MotionFormatError, load_clips, read_clips, validate_motion
from mtvjax.data.safe_pickle import UnsafePickleError, load_pickle, loads_pickle
from mtvjax.data.synthetic_motion import MOTION_KINDS, SyntheticMotionSource


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([{"pose": _Hostile(marker)}]))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*(posix|os)\.system"):
        load_pickle(path)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        read_clips(path)
    assert not marker.exists()


def test_object_arrays_and_other_globals_are_refused():
    with pytest.raises(UnsafePickleError, match="object-dtype"):
        loads_pickle(pickle.dumps(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        loads_pickle(pickle.dumps(eval))


def test_plain_data_and_numpy_round_trip():
    data = [{"pose": np.ones((9, 24, 3), np.float32), "n": np.int64(3), "s": "x", "t": (1, 2.0)}]
    out = loads_pickle(pickle.dumps(data))
    np.testing.assert_array_equal(out[0]["pose"], data[0]["pose"])
    assert out[0]["n"] == 3 and out[0]["t"] == (1, 2.0)


def test_released_sample_loads_through_the_restricted_loader(mtvcrafter_sample):
    clips, errors = load_clips(mtvcrafter_sample / "sampled_data.pkl")
    assert errors == [] and [c.motion.shape[0] for c in clips] == [127, 584, 653]
    assert all(c.video_path and c.video_path.endswith(".mp4") for c in clips)


def _write_clips(path, poses):
    path.write_bytes(pickle.dumps([{"video_path": f"v{i}.mp4", "pose": p}
                                   for i, p in enumerate(poses)]))


@pytest.mark.parametrize("bad, message", [
    (np.full((40, 24, 3), np.nan, np.float32), "NaN/Inf"),
    (np.zeros((40, 23, 3), np.float32), r"shape \(40, 23, 3\)"),
    (np.zeros((10, 24, 3), np.float32), "10 frames, fewer than the 33"),
])
def test_bad_clips_name_file_and_clip(tmp_path, bad, message):
    path = tmp_path / "clips.pkl"
    _write_clips(path, [np.zeros((40, 24, 3), np.float32), bad])
    with pytest.raises(MotionFormatError, match=rf"clips\.pkl\[1\]: .*{message}"):
        load_clips(path, min_frames=33)
    clips, errors = load_clips(path, min_frames=33, skip_bad=True)
    assert len(clips) == 1 and len(errors) == 1 and "clips.pkl[1]" in errors[0]


def test_npy_npz_and_unreadable_files(tmp_path):
    motion = np.random.default_rng(0).normal(size=(20, 24, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", motion)
    np.savez(tmp_path / "b.npz", joints=motion)
    (tmp_path / "c.npy").write_bytes(b"not numpy")
    clips, errors = load_clips(tmp_path, skip_bad=True)
    assert len(clips) == 2 and len(errors) == 1 and "c.npy" in errors[0]
    np.testing.assert_array_equal(clips[1].motion, motion)
    with pytest.raises(MotionFormatError, match="unknown motion file type"):
        read_clips(_touch(tmp_path / "x.bin"))
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        read_clips(tmp_path / "missing.pkl")
    with pytest.raises(MotionFormatError, match="dtype"):
        validate_motion(np.array([["a"]]), "where")


def _touch(path):
    path.write_bytes(b"")
    return path


def test_synthetic_source_is_deterministic_rigid_and_in_camera_space():
    source = SyntheticMotionSource(12, (60, 80), seed=3)
    assert len(source) == 12
    np.testing.assert_array_equal(source[5].motion, SyntheticMotionSource(12, (60, 80), 3)[5].motion)
    assert {source[i].name.split("-")[1] for i in range(12)} == set(MOTION_KINDS)
    for i in range(12):
        m = source[i].motion
        assert m.dtype == np.float32 and 60 <= m.shape[0] <= 80 and np.isfinite(m).all()
        bones = np.linalg.norm(m[:, [c for _, c in skeleton.BONES]] -
                               m[:, [p for p, _ in skeleton.BONES]], axis=-1)
        np.testing.assert_allclose(bones, bones[:1].repeat(len(m), 0), rtol=1e-4, atol=0.05)
        assert np.all(m[:, 15, 1] < m[:, 0, 1])            # head above pelvis: y points down
        assert np.all((m[..., 2] > 1000) & (m[..., 2] < 7000))  # metres in front of the camera
        assert np.ptp(m, axis=0).max() > 20                 # it moves
    with pytest.raises(IndexError):
        source[12]
