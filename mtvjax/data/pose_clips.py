"""One rule turning a motion file (pickle, `.npy`, `.npz`) into clips, for every entry point.

Training, tokenizing (`motion_files`) and dataset building (`data_pipeline.readers`) all read
users' files through `read_pose_clips`, so they accept the same files and get the same clips:

* `.pkl`/`.pickle`, read with the restricted loader (`safe_pickle`; torch tensors allowed):
  - MTVCrafter's training list (`sampled_data.pkl`): a list of dicts, or one dict, each with its
    motion under the first of `MOTION_KEYS` present and optionally `video_path`,
    `video_start_index` (first video frame of the motion) and `fps`;
  - the raw per-video NLF output, both forms the reference extraction script writes: a dict whose
    `pose` or `poses` is `{'joints3d_nonparam': [one entry per frame]}`, turned into clips by the
    detection rule of `mtvjax.data.detections` (`missing`, `max_gap`).
* `.npy`: the motion array itself.
* `.npz`: the array under the first of `MOTION_KEYS` present, or the archive's only array; an
  optional `fps` scalar and `confidence` `[frames, 24]` are kept.

Motion of any integer or floating dtype becomes float32; other dtypes are left for the
validators (`motion_files.validate_motion`, `MotionRecord.validate`) to report.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mtvjax.data.detections import DetectedRun, detected_runs
from mtvjax.data.load_limits import DEFAULT_LIMITS, LoadLimits, read_npy, read_npz
from mtvjax.data.motion_errors import MotionFormatError
from mtvjax.data.safe_pickle import load_pickle

PICKLE_SUFFIXES = (".pkl", ".pickle")
ARRAY_SUFFIXES = (".npy", ".npz")
MOTION_KEYS = ("pose", "joints", "joint", "motion", "poses3d")
RAW_KEYS = ("poses", "pose")
DETECTIONS_KEY = "joints3d_nonparam"


@dataclasses.dataclass(frozen=True)
class PoseClip:
    """One clip as the file holds it.

    Attributes:
      motion: `[frames, 24, 3]`, float32 when the file's dtype is numeric (unvalidated otherwise).
      item: index of the clip's entry in a pickled list (0 for a dict or an array file).
      part: index of the detected stretch of a split raw NLF file, None when it was not split.
      frame_indices: int64 `[frames]`, the video frame of each motion frame.
      video_path: as written in the file (not resolved).
      fps: the file's frame rate entry, if any.
      confidence: `[frames, 24]` per-joint confidence of an `.npz`, if any.
      counts: the per-frame detection decisions of a raw NLF file (`detections.COUNT_KEYS`).
      video_length: the file's `video_length` entry (frames of its video), if any.
    """

    motion: np.ndarray
    item: int = 0
    part: int | None = None
    frame_indices: np.ndarray | None = None
    video_path: str | None = None
    fps: float | None = None
    confidence: np.ndarray | None = None
    counts: dict | None = None
    video_length: int | None = None


def as_float32(motion):
    """`motion` as a float32 array when its dtype is numeric; anything else unchanged."""
    arr = np.asarray(motion)
    return arr.astype(np.float32, copy=False) if arr.dtype.kind in "fiu" else arr


def _fps(value, source) -> float | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "fiu" or not float(arr.reshape(())) > 0:
        raise MotionFormatError(source, f"'fps' must be a single positive number, got {value!r:.60}")
    return float(arr.reshape(()))


def _video_length(value, source) -> int | None:
    if value is None:
        return None
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise MotionFormatError(source, f"'video_length' must be a frame count, got {value!r:.40}")
    return int(value)


def _video(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _raw_detections(item: dict, source):
    """The per-frame detections of a raw NLF dict, or None when `item` is not one."""
    for key in RAW_KEYS:
        if isinstance(item.get(key), dict):
            if DETECTIONS_KEY not in item[key]:
                raise MotionFormatError(source, f"per-frame poses under '{key}' lack "
                                        f"'{DETECTIONS_KEY}'")
            return item[key][DETECTIONS_KEY]
    return None


def _item_clips(item, index: int, source, missing: str, max_gap: int) -> list[PoseClip]:
    if not isinstance(item, dict):
        raise MotionFormatError(source, f"clip {index} is a {type(item).__name__}, expected a dict")
    video, fps = _video(item.get("video_path")), _fps(item.get("fps"), source)
    length = _video_length(item.get("video_length"), source)
    detections = _raw_detections(item, source)
    if detections is not None:
        runs: list[DetectedRun] = detected_runs(detections, source, missing, max_gap)
        return [PoseClip(r.motion, index, n if len(runs) > 1 else None, r.frame_indices, video,
                         fps, counts=r.counts, video_length=length) for n, r in enumerate(runs)]
    key = next((k for k in MOTION_KEYS if k in item), None)
    if key is None:
        raise MotionFormatError(source, f"clip {index} has none of {list(MOTION_KEYS)} "
                                f"(keys: {sorted(map(str, item))[:10]})")
    motion = as_float32(item[key])
    start = item.get("video_start_index") or 0
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise MotionFormatError(source, f"'video_start_index' must be a frame number, got {start!r:.40}")
    frames = motion.shape[0] if motion.ndim else 0
    return [PoseClip(motion, index, None, int(start) + np.arange(frames, dtype=np.int64), video, fps,
                     video_length=length)]


def clips_from_pickle(data, source, missing: str = "error", max_gap: int = 0) -> list[PoseClip]:
    """The clips of a decoded motion pickle (a list of clip dicts, one dict, or raw NLF output)."""
    items = data if isinstance(data, (list, tuple)) else [data]
    if not isinstance(data, (list, tuple, dict)):
        raise MotionFormatError(source, f"expected a list of clips or a dict, found {type(data).__name__}")
    if not items:
        raise MotionFormatError(source, "the pickle holds an empty list of clips")
    return [clip for i, item in enumerate(items)
            for clip in _item_clips(item, i, source, missing, max_gap)]


def motion_key(keys, source) -> str:
    """The name of the motion array among an archive's `keys`, or raises naming the file."""
    keys = list(keys)
    for key in MOTION_KEYS:
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise MotionFormatError(source, f"no motion array: expected one of {list(MOTION_KEYS)} or a "
                            f"single array, found {keys}")


def clip_from_arrays(arrays: dict, source) -> PoseClip:
    """The clip of an `.npz` archive's arrays."""
    key = motion_key(arrays, source)
    confidence = arrays.get("confidence") if key != "confidence" else None
    fps = _fps(arrays.get("fps"), source) if key != "fps" else None
    return PoseClip(as_float32(arrays[key]), fps=fps,
                    confidence=None if confidence is None else as_float32(confidence))


def read_pose_clips(path, missing: str = "error", max_gap: int = 0,
                    limits: LoadLimits = DEFAULT_LIMITS) -> list[PoseClip]:
    """All clips of one motion file, under the limits of `load_limits`."""
    source = os.fspath(path)
    suffix = Path(source).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return clips_from_pickle(load_pickle(source, limits), source, missing, max_gap)
    if suffix == ".npy":
        return [PoseClip(as_float32(read_npy(source, limits)))]
    if suffix == ".npz":
        return [clip_from_arrays(read_npz(source, limits), source)]
    raise MotionFormatError(source, f"unknown motion file type; expected one of "
                            f"{PICKLE_SUFFIXES + ARRAY_SUFFIXES}")
