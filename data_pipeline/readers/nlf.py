"""MTVCrafter / NLF pose pickles as records, read by the shared rule of `mtvjax.data.pose_clips`.

Both layouts the reference code writes are read (camera-space millimetres, SMPL joint order),
with torch tensors (any device) rebuilt as numpy arrays by the restricted loader:

* the merged training list (`sampled_data.pkl`): a list of dicts with `video_path`, `pose`
  `[frames, 24, 3]` (or another of `pose_clips.MOTION_KEYS`, optionally `video_start_index`),
  `video_length`, `video_height`, `video_width`. One record per item; a single dict is a list of one.
* the raw per-video output of the NLF extraction step: a dict whose `pose` or `poses` holds
  `{'joints3d_nonparam': [...]}`, one entry per video frame. The rule of
  `mtvjax.data.detections` applies: the first person of each frame is taken; gaps without a
  person of at most `max_gap` frames are filled; longer gaps refuse the file (`missing="error"`,
  as MTVCrafter's own dataset code drops such videos) or split it (`missing="split"`), each
  detected stretch a record with `frame_indices` naming the video frames it covers. The counted
  decisions are in each record's `frame_counts`.

Frame rate: `fps` when given; else the file's `fps` entry; else the video's rate read with PyAV
when the video exists and PyAV is installed; else `default_fps` (30). Relative `video_path`s are
resolved against the pickle's folder; the path is kept even when the video does not exist.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from mtvjax.data.pose_clips import read_pose_clips

from data_pipeline.readers.ingested_record import MotionRecord, make_record

DEFAULT_FPS = 30.0


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


def _resolve_video(video_path: str | None, pkl_dir: Path) -> str | None:
    if video_path is None:
        return None
    p = Path(video_path)
    return str(p if p.is_absolute() else pkl_dir / p)


def _pick_fps(fps, default_fps, video: str | None, file_fps: float | None) -> float:
    if fps is not None:
        return float(fps)
    if file_fps is not None:
        return file_fps
    if video is not None and os.path.isfile(video):
        found = video_fps(video)
        if found is not None:
            return found
    return float(default_fps)


def load_nlf_pickle(path: str | os.PathLike, fps: float | None = None, default_fps: float = DEFAULT_FPS,
                    missing: str = "error", max_gap: int = 0) -> list[MotionRecord]:
    """Loads an MTVCrafter/NLF `.pkl` (either layout, see the module docstring) as records.

    Args:
      path: the pickle; loaded with `mtvjax.data.safe_pickle.load_pickle`, so a pickle naming
        anything but plain data and torch tensors raises `UnsafePickleError` before it can run.
      fps: frame rate to use for every clip; None reads it from the file or video (or `default_fps`).
      default_fps: rate when nothing else gives one.
      missing: 'error' or 'split', what to do with raw per-frame files that miss detections for
        longer than `max_gap` frames.
      max_gap: the longest run of frames without a person that is filled rather than refused/split.
    Returns:
      records with `source_id` the path (plus `#i` for the i-th clip of a list, and `#k` for the
      k-th detected stretch of a split file).
    """
    source = os.fspath(path)
    clips = read_pose_clips(source, missing=missing, max_gap=max_gap)
    pkl_dir = Path(source).absolute().parent
    several_items = len({clip.item for clip in clips}) > 1
    records = []
    for clip in clips:
        sid = source + (f"#{clip.item}" if several_items else "") + (
            "" if clip.part is None else f"#{clip.part}")
        video = _resolve_video(clip.video_path, pkl_dir)
        records.append(make_record(
            clip.motion, _pick_fps(fps, default_fps, video, clip.fps), sid, video_path=video,
            frame_indices=clip.frame_indices, convention="smpl", frame_counts=clip.counts,
            video_length=clip.video_length))
    return records
