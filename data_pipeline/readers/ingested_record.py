"""The in-memory record every ingestion reader returns (before it is encoded into a shard).

A `MotionRecord` holds one clip as SMPL joint coordinates `[frames, 24, 3]` in the camera space
of NLF output (x right, y down, z depth, millimetres), whatever file format it came from.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mtvjax.data.load_limits import check_coordinates_mm
from mtvjax.data.motion_errors import MotionFormatError
from mtvjax.data.skeleton import NUM_JOINTS

CONVENTIONS = ("smpl", "mocap")


@dataclasses.dataclass
class MotionRecord:
    """One motion clip in camera-space millimetres, SMPL joint order.

    Attributes:
      motion: float32 `[frames, 24, 3]`.
      fps: frames per second of `motion`.
      source_id: the file it came from, with `#index` appended when the file holds several clips.
      video_path: the video the motion was estimated from, if any.
      frame_indices: int64 `[frames]`, the video frame each motion frame belongs to, if any.
      confidence: optional float32 `[frames, 24]` per-joint confidence.
      convention: "smpl" (joints where SMPL regresses them) or "mocap" (a mocap rig's joints).
      frame_counts: for raw per-frame NLF output, the counted per-frame decisions
        (`mtvjax.data.detections.COUNT_KEYS`); summed over a file's records they are the file's.
      video_length: the frame count of the video the file states (`video_length`), if any.
    """

    motion: np.ndarray
    fps: float
    source_id: str
    video_path: str | None = None
    frame_indices: np.ndarray | None = None
    confidence: np.ndarray | None = None
    convention: str = "smpl"
    frame_counts: dict | None = None
    video_length: int | None = None

    @property
    def num_frames(self) -> int:
        return int(np.shape(self.motion)[0])

    def validate(self) -> "MotionRecord":
        """Checks shapes, dtypes and values; raises `MotionFormatError` naming the source."""
        src = self.source_id
        motion = self.motion
        if not isinstance(motion, np.ndarray):
            raise MotionFormatError(src, f"motion must be a numpy array, got {type(motion).__name__}")
        if not np.issubdtype(motion.dtype, np.floating):
            raise MotionFormatError(src, f"motion must be floating point, got dtype {motion.dtype}")
        if motion.ndim != 3 or motion.shape[1:] != (NUM_JOINTS, 3):
            raise MotionFormatError(
                src, f"motion must have shape [frames, {NUM_JOINTS}, 3], got {list(motion.shape)}")
        if motion.shape[0] == 0:
            raise MotionFormatError(src, "motion is empty (0 frames)")
        if not np.all(np.isfinite(motion)):
            bad = np.unique(np.nonzero(~np.isfinite(motion))[0])
            raise MotionFormatError(
                src, f"motion holds NaN or Inf values in {bad.size} frame(s), first at frame {bad[0]}")
        check_coordinates_mm(motion, src)
        frames = motion.shape[0]
        if not (isinstance(self.fps, (int, float, np.floating, np.integer))
                and np.isfinite(self.fps) and self.fps > 0):
            raise MotionFormatError(src, f"fps must be a positive number, got {self.fps!r}")
        if self.convention not in CONVENTIONS:
            raise MotionFormatError(
                src, f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if self.frame_indices is not None:
            idx = np.asarray(self.frame_indices)
            if not np.issubdtype(idx.dtype, np.integer) or idx.shape != (frames,):
                raise MotionFormatError(
                    src, f"frame_indices must be integers of shape [{frames}], got {idx.dtype} "
                    f"{list(idx.shape)}")
        if self.confidence is not None:
            conf = np.asarray(self.confidence)
            if conf.shape != (frames, NUM_JOINTS) or not np.issubdtype(conf.dtype, np.floating):
                raise MotionFormatError(
                    src, f"confidence must be float of shape [{frames}, {NUM_JOINTS}], got "
                    f"{conf.dtype} {list(conf.shape)}")
            if not np.all(np.isfinite(conf)):
                raise MotionFormatError(src, "confidence holds NaN or Inf values")
        return self


def make_record(motion, fps: float, source_id: str, **fields) -> MotionRecord:
    """Builds a validated record, converting a floating `motion` to float32 first.

    Non-float input (ints, strings, objects) is left as it is so `validate` reports it.
    """
    arr = np.asarray(motion) if not isinstance(motion, np.ndarray) else motion
    if isinstance(arr, np.ndarray) and np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32, copy=False)
    conf = fields.get("confidence")
    if conf is not None:
        conf = np.asarray(conf)
        if np.issubdtype(conf.dtype, np.floating):
            fields["confidence"] = conf.astype(np.float32, copy=False)
    if fields.get("frame_indices") is not None:
        idx = np.asarray(fields["frame_indices"])
        if np.issubdtype(idx.dtype, np.integer):
            fields["frame_indices"] = idx.astype(np.int64, copy=False)
    return MotionRecord(motion=arr, fps=float(fps), source_id=source_id, **fields).validate()


def add_frame_counts(total: dict, records) -> dict:
    """Adds the records' `frame_counts` into `total` (for a build manifest); returns `total`."""
    for record in records:
        for name, n in (record.frame_counts or {}).items():
            total[name] = total.get(name, 0) + int(n)
    return total
