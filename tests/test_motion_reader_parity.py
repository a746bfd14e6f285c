"""One reading rule: training (`motion_files`) and dataset building (`ingest`) get the same clips."""
import pickle

import numpy as np
import pytest

from data_pipeline.readers.ingest import load_motion_file
from mtvjax.data.motion_files import load_clips


def _motion(frames: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(frames, 24, 3)) * 300 + [0, 0, 3000]).astype(dtype)


def _both(path, **rule):
    clips, errors = load_clips(path, **rule)
    assert errors == []
    records = load_motion_file(path, **rule)
    assert len(clips) == len(records)
    for clip, record in zip(clips, records):
        assert clip.motion.dtype == record.motion.dtype == np.float32
        np.testing.assert_allclose(clip.motion, record.motion, rtol=1e-6)
    return clips


def _write(tmp_path, name, motion):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, motion)
    elif name.endswith(".npz"):
        np.savez(path, **motion)
    else:
        path.write_bytes(pickle.dumps(motion))
    return path


@pytest.mark.parametrize("name, content", [
    ("int.npy", _motion(5, dtype=np.int32)),
    ("int.npz", {"joints": _motion(5, dtype=np.int32)}),
    ("poses3d.npz", {"poses3d": _motion(5), "fps": np.array(25.0)}),
    ("poses3d.pkl", [{"poses3d": _motion(5, dtype=np.int32)}, {"pose": _motion(3)}]),
    ("joint.pkl", {"joint": _motion(4), "video_start_index": 7}),
    ("raw.pkl", {"poses": {"joints3d_nonparam": [m[None] for m in _motion(6)]}}),
])
def test_same_file_same_clips_through_both_entry_points(tmp_path, name, content):
    clips = _both(_write(tmp_path, name, content))
    assert all(c.motion.shape[1:] == (24, 3) for c in clips)


def test_split_raw_file_same_clips(tmp_path):
    per_frame = [m[None] for m in _motion(8)]
    per_frame[2] = per_frame[3] = None
    path = _write(tmp_path, "gaps.pkl", {"pose": {"joints3d_nonparam": per_frame}})
    assert [c.motion.shape[0] for c in _both(path, missing="split")] == [2, 4]
    assert [c.motion.shape[0] for c in _both(path, max_gap=2)] == [8]


def test_released_sample_same_clips(mtvcrafter_sample):
    clips = _both(mtvcrafter_sample / "sampled_data.pkl")
    assert [c.motion.shape[0] for c in clips] == [127, 584, 653]
