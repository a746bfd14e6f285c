"""Per-frame NLF detections turned into continuous single-person motion, with counted decisions.

The raw output of the NLF extraction step holds, for every video frame, the people detected in
it: `[people, 24, 3]`, a bare `[24, 3]`, a batch list of one such array, a list of per-person
`[24, 3]` arrays, or None / an empty array when nobody was found. The rule (as the reference
code does) takes the first person of every frame. Runs of frames without a person of at most
`max_gap` frames are filled: between two detections by linear interpolation, at the start or end
of the video by holding the nearest detection. Longer runs either refuse the file
(`missing="error"`, MTVCrafter's dataset drops such videos) or split the video into one clip per
detected stretch (`missing="split"`), those frames being dropped.

Each clip carries counts of these decisions, over its own frames and the dropped frames before
it (the last clip also those after it), so summing over the clips gives the file's counts.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mtvjax.data.motion_errors import MotionFormatError
from mtvjax.data.skeleton import NUM_JOINTS

MISSING_MODES = ("error", "split")
COUNT_KEYS = ("frames", "frames_without_person", "frames_with_several_people", "frames_filled",
              "frames_dropped", "clips_split")


@dataclasses.dataclass(frozen=True)
class DetectedRun:
    motion: np.ndarray          # float32 [frames, 24, 3]
    frame_indices: np.ndarray   # int64 [frames], video frame of each motion frame
    counts: dict                # COUNT_KEYS -> int


def frame_people(entry, source, frame: int) -> np.ndarray:
    """The people `[people, 24, 3]` (float32) of one frame's entry; `[0, 24, 3]` when none."""
    if entry is None or isinstance(entry, (list, tuple)) and len(entry) == 0:
        return np.zeros((0, NUM_JOINTS, 3), np.float32)
    try:
        arr = np.asarray(entry)
    except ValueError:  # a ragged list: read it person by person
        arr = np.asarray(None)
    if isinstance(entry, (list, tuple)) and (arr.dtype.kind not in "fiu" or arr.size == 0):
        return np.concatenate([frame_people(e, source, frame) for e in entry])
    if arr.dtype.kind not in "fiu":
        raise MotionFormatError(source, f"frame {frame}: detections have dtype {arr.dtype}, "
                                "expected numbers")
    if arr.ndim == 4 and arr.shape[0] == 1:  # a batch of one image
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
        raise MotionFormatError(
            source, f"frame {frame}: expected detections [people, {NUM_JOINTS}, 3], got "
            f"{list(arr.shape)}")
    return arr.astype(np.float32)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of every run of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return [(int(a), int(b)) for a, b in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0])]


def _fill(motion: np.ndarray, start: int, end: int):
    """Fills frames [start, end) from the detections around them (interpolation or hold)."""
    before, after = start - 1, end
    if before < 0:
        motion[start:end] = motion[after]
    elif after >= len(motion):
        motion[start:end] = motion[before]
    else:
        w = (np.arange(start, end) - before) / (after - before)
        motion[start:end] = (1 - w)[:, None, None] * motion[before] + w[:, None, None] * motion[after]


def detected_runs(per_frame, source, missing: str = "error", max_gap: int = 0) -> list[DetectedRun]:
    """The clips of one video's per-frame detections under the rule of the module docstring."""
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
    if not isinstance(max_gap, int) or max_gap < 0:
        raise ValueError(f"max_gap must be a non-negative number of frames, got {max_gap!r}")
    if not isinstance(per_frame, (list, tuple)):
        raise MotionFormatError(source, "per-frame detections must be a list with one entry per frame")
    people = [frame_people(e, source, i) for i, e in enumerate(per_frame)]
    count = np.array([len(p) for p in people], np.int64)
    found = count > 0
    if not found.any():
        raise MotionFormatError(source, "no person detected in any frame")
    motion = np.stack([p[0] if len(p) else np.zeros((NUM_JOINTS, 3), np.float32) for p in people])
    filled = np.zeros(len(people), bool)
    keep = found.copy()
    for start, end in _runs(~found):
        if end - start <= max_gap:
            _fill(motion, start, end)
            filled[start:end] = keep[start:end] = True
    if missing == "error" and not keep.all():
        lost = np.nonzero(~keep)[0]
        raise MotionFormatError(
            source, f"no person detected in {lost.size} of {keep.size} frames (first: frame "
            f"{lost[0]}); pass missing='split' to keep the detected stretches, or a larger "
            f"max_gap (now {max_gap}) to fill short gaps")
    runs = _runs(keep)
    results = []
    for n, (a, b) in enumerate(runs):
        lo = runs[n - 1][1] if n else 0
        hi = b if n + 1 < len(runs) else len(people)
        counts = {"frames": hi - lo, "frames_without_person": int((~found[lo:hi]).sum()),
                  "frames_with_several_people": int((count[lo:hi] > 1).sum()),
                  "frames_filled": int(filled[lo:hi].sum()),
                  "frames_dropped": int((~keep[lo:hi]).sum()), "clips_split": int(n > 0)}
        results.append(DetectedRun(motion[a:b].copy(), np.arange(a, b, dtype=np.int64), counts))
    return results
