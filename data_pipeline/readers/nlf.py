"""MTVCrafter / NLF pose pickles, read only through the restricted unpickler.

Two layouts are read (both already camera-space millimetres in SMPL joint order):

* the merged training list MTVCrafter writes (`sampled_data.pkl`): a list of dicts with
  `video_path`, `pose` `[frames, 24, 3]` (or `joint` plus `video_start_index`), `video_length`,
  `video_height`, `video_width`. One record per item. A single such dict is read as a list of one.
* the raw per-video output of the NLF extraction step: a dict with `poses` (or `pose`) holding
  `{'joints3d_nonparam': [...]}`, one entry per video frame, each the detected people
  `[people, 24, 3]` (possibly wrapped in a batch list of one). The first person is taken.
  The reference extraction script pickles torch tensors there; the restricted loader refuses
  those (they name torch code), so such files must be converted to numpy arrays first.

Frames without a detection: by default (`missing="error"`) the file is refused, as MTVCrafter's
own dataset code drops such videos; `missing="split"` instead keeps every run of consecutive
detected frames as its own record, with `frame_indices` naming the video frames it covers.

Frame rate: `fps` when given; else the video's rate read with PyAV when the video exists and
PyAV is installed; else `default_fps` (30). Relative `video_path`s are resolved against the
pickle's folder; the path is kept even when the video does not exist.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from mtvjax.data.motion_files import MotionFormatError
from mtvjax.data.safe_pickle import load_pickle
from mtvjax.data.skeleton import NUM_JOINTS

from data_pipeline.readers.ingested_record import MotionRecord, make_record

DEFAULT_FPS = 30.0
POSE_KEY = "joints3d_nonparam"


@functools.lru_cache(maxsize=256)
def video_fps(path: str) -> float | None:
    """The average frame rate of a video file via PyAV, or None when unknown or unreadable."""
    try:
        import av  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return float(rate) if rate and float(rate) > 0 else None
    except Exception:  # noqa: BLE001 - a broken or odd video just means "fps unknown"
        return None


def _resolve_video(video_path, pkl_dir: Path) -> str | None:
    if video_path is None:
        return None
    if isinstance(video_path, bytes):
        video_path = video_path.decode("utf-8", errors="replace")
    p = Path(str(video_path))
    return str(p if p.is_absolute() else pkl_dir / p)


def _pick_fps(fps, default_fps, video: str | None, item: dict) -> float:
    if fps is not None:
        return float(fps)
    if isinstance(item.get("fps"), (int, float)) and item["fps"] > 0:
        return float(item["fps"])
    if video is not None and os.path.isfile(video):
        found = video_fps(video)
        if found is not None:
            return found
    return float(default_fps)


def _clip_record(item: dict, source: str, pkl_dir: Path, fps, default_fps) -> MotionRecord:
    key = "pose" if "pose" in item else "joint" if "joint" in item else None
    if key is None:
        raise MotionFormatError(
            source, f"clip has no 'pose' or 'joint' array (keys: {sorted(map(str, item))})")
    motion = np.asarray(item[key])
    start = int(item.get("video_start_index", 0) or 0)
    video = _resolve_video(item.get("video_path"), pkl_dir)
    frames = motion.shape[0] if motion.ndim >= 1 else 0
    return make_record(motion, _pick_fps(fps, default_fps, video, item), source, video_path=video,
                       frame_indices=start + np.arange(frames), convention="smpl")


def _first_person(entry, source: str, frame: int) -> np.ndarray | None:
    """The first detected person `[24, 3]` of one frame's entry, or None when nobody was found."""
    if entry is None:
        return None
    if isinstance(entry, (list, tuple)) and len(entry) == 0:
        return None
    try:
        arr = np.asarray(entry, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise MotionFormatError(
            source, f"frame {frame}: detections are not a numeric array ({e})") from None
    if arr.ndim == 4 and arr.shape[0] == 1:  # a batch of one image
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
        raise MotionFormatError(
            source, f"frame {frame}: expected detections [people, {NUM_JOINTS}, 3], got {list(arr.shape)}")
    return arr[0] if arr.shape[0] else None


def _raw_records(data: dict, source: str, pkl_dir: Path, fps, default_fps,
                 missing: str) -> list[MotionRecord]:
    poses = data.get("poses", data.get("pose"))
    per_frame = poses[POSE_KEY]
    if not isinstance(per_frame, (list, tuple)):
        raise MotionFormatError(source, f"'{POSE_KEY}' must be a list with one entry per frame")
    people = [_first_person(e, source, i) for i, e in enumerate(per_frame)]
    found = np.array([p is not None for p in people], bool)
    if not found.any():
        raise MotionFormatError(source, "no person detected in any frame")
    video = _resolve_video(data.get("video_path"), pkl_dir)
    rate = _pick_fps(fps, default_fps, video, data)
    if missing == "error":
        if not found.all():
            lost = np.nonzero(~found)[0]
            raise MotionFormatError(
                source, f"no person detected in {lost.size} of {found.size} frames (first: frame "
                f"{lost[0]}); pass missing='split' to keep the detected stretches")
        runs = [(0, found.size)]
    elif missing == "split":
        edges = np.diff(np.concatenate([[0], found.astype(np.int8), [0]]))
        runs = list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))
    else:
        raise ValueError(f"missing must be 'error' or 'split', got {missing!r}")
    records = []
    for n, (a, b) in enumerate(runs):
        motion = np.stack(people[a:b]).astype(np.float32)
        sid = source if len(runs) == 1 else f"{source}#{n}"
        records.append(make_record(motion, rate, sid, video_path=video,
                                   frame_indices=np.arange(a, b), convention="smpl"))
    return records


def load_nlf_pickle(path: str | os.PathLike, fps: float | None = None, default_fps: float = DEFAULT_FPS,
                    missing: str = "error") -> list[MotionRecord]:
    """Loads an MTVCrafter/NLF `.pkl` (either layout, see the module docstring) as records.

    Args:
      path: the pickle; loaded with `mtvjax.data.safe_pickle.load_pickle`, so a pickle naming
        anything but plain data raises `UnsafePickleError` before it can run.
      fps: frame rate to use for every clip; None reads it from the video (or `default_fps`).
      default_fps: rate when neither `fps` nor a readable video gives one.
      missing: 'error' or 'split', what to do with raw per-frame files that miss detections.
    Returns:
      records with `source_id` the path (plus `#i` for the i-th clip of a list or the i-th
      detected stretch of a split file).
    """
    source = os.fspath(path)
    data = load_pickle(path)
    pkl_dir = Path(source).absolute().parent
    if isinstance(data, dict):
        poses = data.get("poses", data.get("pose"))
        if isinstance(poses, dict):
            if POSE_KEY not in poses:
                raise MotionFormatError(
                    source, f"per-frame poses lack '{POSE_KEY}' (keys: {sorted(map(str, poses))})")
            return _raw_records(data, source, pkl_dir, fps, default_fps, missing)
        return [_clip_record(data, source, pkl_dir, fps, default_fps)]
    if isinstance(data, (list, tuple)):
        if not data:
            raise MotionFormatError(source, "the pickle holds an empty list of clips")
        records = []
        for i, item in enumerate(data):
            sid = source if len(data) == 1 else f"{source}#{i}"
            if not isinstance(item, dict):
                raise MotionFormatError(sid, f"clip {i} is a {type(item).__name__}, expected a dict")
            records.append(_clip_record(item, sid, pkl_dir, fps, default_fps))
        return records
    raise MotionFormatError(source, f"expected a list of clips or a dict, found {type(data).__name__}")
