"""Normalisation statistics of motion data: per-joint, per-axis mean and standard deviation.

4DMoT z-scores its input with these; the mean joint positions also place the motion tokens of
the 4D RoPE. They come from the training data or from `.npy` files (the released model's are
`mean.npy`/`std.npy` next to the MTVCrafter sample data).
"""
from __future__ import annotations

import numpy as np

from mtvjax.data.skeleton import NUM_JOINTS

MIN_STD = 1e-3  # millimetres; keeps a constant coordinate from dividing by zero


def compute_stats(motions) -> dict[str, np.ndarray]:
    """Mean and std `[24, 3]` over all frames of an iterable of `[frames, 24, 3]` motions."""
    total, total_sq, count = np.zeros((NUM_JOINTS, 3)), np.zeros((NUM_JOINTS, 3)), 0
    for motion in motions:
        m = np.asarray(motion, np.float64)
        total += m.sum(axis=0)
        total_sq += (m ** 2).sum(axis=0)
        count += m.shape[0]
    if count == 0:
        raise ValueError("cannot compute normalisation statistics from no motion")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return {"mean": mean.astype(np.float32), "std": np.maximum(std, MIN_STD).astype(np.float32)}


def load_stats(mean_path: str, std_path: str) -> dict[str, np.ndarray]:
    """Reads `[24, 3]` mean/std `.npy` files, with an error naming the file that is wrong."""
    stats = {}
    for key, path in (("mean", mean_path), ("std", std_path)):
        arr = np.load(path, allow_pickle=False)
        if arr.shape != (NUM_JOINTS, 3) or not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: expected finite {key} of shape (24, 3), got {arr.shape}")
        stats[key] = arr.astype(np.float32)
    if np.any(stats["std"] <= 0):
        raise ValueError(f"{std_path}: standard deviations must be positive")
    return stats
