"""Driving controls: the pose file's frame rate, speed, start and stride at the model's rate."""
import pickle

import ml_collections
import numpy as np
import pytest

from mtvjax.sample.driving import driving_motion, reconstruction_warnings


def controls(**kw):
    c = ml_collections.ConfigDict(dict(clip=0, start=0, stride=1, fps=0.0, speed=1.0))
    c.update(kw)
    return c


def smooth_motion(frames: int, fps: float) -> np.ndarray:
    """A clip sampled at `fps` from one continuous motion (so rates can be compared)."""
    t = np.arange(frames)[:, None, None] / fps
    joint = np.arange(24)[None, :, None]
    axis = np.arange(3)[None, None, :]
    return (300 * np.sin(1.3 * t + 0.2 * joint + axis) + 40 * joint).astype(np.float32)


@pytest.fixture
def sixty_and_twenty(tmp_path):
    """The same 3 s of motion as a 60 fps .npz (rate in the file) and a 20 fps .npy."""
    np.savez(tmp_path / "m60.npz", motion=smooth_motion(181, 60.0), fps=np.float32(60.0))
    np.save(tmp_path / "m20.npy", smooth_motion(61, 20.0))
    return tmp_path / "m60.npz", tmp_path / "m20.npy"


def test_sixty_fps_driven_at_twenty_matches_the_twenty_fps_motion(sixty_and_twenty):
    m60, m20 = sixty_and_twenty
    fast = driving_motion(m60, 49, controls(), model_fps=20.0)
    slow = driving_motion(m20, 49, controls(), model_fps=20.0)
    assert fast.source_fps == 60.0 and slow.source_fps == 20.0
    np.testing.assert_allclose(fast.motion, slow.motion, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(fast.source_frames, np.arange(49) * 3.0)
    # the config's rate overrides a file without one: the .npy read as 60 fps is three times faster
    as_sixty = driving_motion(m20, 17, controls(fps=60.0), model_fps=20.0)
    np.testing.assert_allclose(as_sixty.motion, np.load(m20)[:49:3], rtol=1e-6)


def test_speed_changes_the_duration(sixty_and_twenty):
    _, m20 = sixty_and_twenty
    motion = np.load(m20)
    normal = driving_motion(m20, 61, controls(), model_fps=20.0)
    np.testing.assert_array_equal(normal.motion, motion)          # frame for frame
    double = driving_motion(m20, 31, controls(speed=2.0), model_fps=20.0)
    np.testing.assert_array_equal(double.motion, motion[::2])      # all 3 s in 1.5 s
    with pytest.raises(ValueError, match="too short"):
        driving_motion(m20, 32, controls(speed=2.0), model_fps=20.0)
    half = driving_motion(m20, 121, controls(speed=0.5), model_fps=20.0)   # 6 s, interpolated
    np.testing.assert_allclose(half.motion[1::2], 0.5 * (motion[:-1] + motion[1:]), rtol=1e-5)
    np.testing.assert_array_equal(half.motion[::2], motion)


def test_start_and_stride_compose_with_the_rate(sixty_and_twenty):
    m60, _ = sixty_and_twenty
    motion = np.load(m60)["motion"]
    drive = driving_motion(m60, 10, controls(start=7, stride=2), model_fps=20.0)
    np.testing.assert_array_equal(drive.motion, motion[7:7 + 60:6])


@pytest.mark.parametrize("key,value", [("speed", 0.0), ("stride", 0), ("fps", -1.0),
                                       ("start", -1), ("clip", -1)])
def test_bad_controls_name_the_key(sixty_and_twenty, key, value):
    with pytest.raises(ValueError, match=f"motion.{key}"):
        driving_motion(sixty_and_twenty[0], 9, controls(**{key: value}), model_fps=20.0)


def test_pickle_rate_and_missing_clip(tmp_path):
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump([{"pose": smooth_motion(91, 30.0), "fps": 30.0}], f)
    drive = driving_motion(tmp_path / "m.pkl", 61, controls(), model_fps=20.0)
    assert drive.source_fps == 30.0 and drive.source_frames[-1] == 90.0
    with pytest.raises(ValueError, match="clip 1 requested"):
        driving_motion(tmp_path / "m.pkl", 9, controls(clip=1), model_fps=20.0)


def test_reconstruction_warnings_name_the_window():
    warnings = reconstruction_warnings(np.array([12.0, 80.5, 49.9]), 50.0)
    assert len(warnings) == 1 and warnings[0].startswith("window 2:") and "80.5 mm" in warnings[0]
    assert reconstruction_warnings(np.array([1e4]), 0.0) == []
