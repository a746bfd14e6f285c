"""Changing the frame rate of a joint-position sequence by linear interpolation in time."""
from __future__ import annotations

import numpy as np


def snap_fps(fps: float, rel_tol: float = 1e-4) -> float:
    """Rounds a rate read from a rounded frame time (1 / 0.016667 = 59.9988) to the integer it means."""
    nearest = round(fps)
    if nearest > 0 and abs(fps - nearest) <= rel_tol * fps:
        return float(nearest)
    return float(fps)


def resample_times(num_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Source-frame positions (fractional) of the output frames, spanning the same duration.

    The output starts with the first source frame and holds every output frame that falls within
    the source clip: `floor((num_frames - 1) * dst_fps / src_fps) + 1` frames.
    """
    if num_frames <= 0:
        return np.zeros((0,))
    step = src_fps / dst_fps
    count = int(np.floor((num_frames - 1) / step + 1e-6)) + 1
    return np.minimum(np.arange(count) * step, num_frames - 1)


def resample_linear(values: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Resamples `[frames, ...]` from `src_fps` to `dst_fps` by linear interpolation between frames."""
    values = np.asarray(values)
    if src_fps <= 0 or dst_fps <= 0:
        raise ValueError(f"frame rates must be positive, got {src_fps} -> {dst_fps}")
    if abs(src_fps - dst_fps) <= 1e-9 * src_fps:
        return values
    return sample_at(values, resample_times(values.shape[0], src_fps, dst_fps))


def sample_at(values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """`values [frames, ...]` at fractional frame positions `times` (within [0, frames - 1]),
    linearly interpolated between the two neighbouring frames."""
    values = np.asarray(values)
    times = np.asarray(times, np.float64)
    lo = np.clip(np.floor(times).astype(np.int64), 0, values.shape[0] - 1)
    hi = np.minimum(lo + 1, values.shape[0] - 1)
    w = (times - lo).reshape((-1,) + (1,) * (values.ndim - 1))
    out = values[lo] * (1.0 - w) + values[hi] * w
    return out.astype(values.dtype, copy=False)
