"""Motion clips read from users' files: MTVCrafter/NLF `.pkl`, `.npy` and `.npz` joint arrays.

A clip is SMPL joint motion `[frames, 24, 3]` float32 in camera-space millimetres. Files are
read by the one rule of `mtvjax.data.pose_clips` (the dataset builder reads them the same way),
under the bounds of `mtvjax.data.load_limits`. Every loader validates what it reads and raises
`MotionFormatError` naming the file and clip; `load_clips` with `skip_bad=True` instead collects
those errors so a long run can skip and count them.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mtvjax.data.load_limits import MAX_ABS_MM, check_coordinates_mm
from mtvjax.data.motion_errors import MotionFormatError, UnsafePickleError
from mtvjax.data.pose_clips import ARRAY_SUFFIXES, PICKLE_SUFFIXES, read_pose_clips
from mtvjax.data.skeleton import NUM_JOINTS

__all__ = ["MOTION_SUFFIXES", "MotionClip", "MotionFormatError", "load_clips", "motion_files",
           "read_clips", "validate_motion"]

MOTION_SUFFIXES = PICKLE_SUFFIXES + ARRAY_SUFFIXES


@dataclasses.dataclass(frozen=True)
class MotionClip:
    motion: np.ndarray          # [frames, 24, 3] float32, millimetres
    name: str                   # file path plus clip index, for error messages and logs
    video_path: str | None = None
    fps: float | None = None    # the file's frame rate, when it carries one

def validate_motion(motion, name: str, min_frames: int = 1,
                    max_abs_mm: float = MAX_ABS_MM) -> np.ndarray:
    """Returns `motion` as float32 `[frames, 24, 3]` or raises `MotionFormatError` naming `name`
    (also for coordinates beyond `max_abs_mm`, finite but absurd: wrong units or garbage)."""
    arr = np.asarray(motion)
    if arr.dtype.kind not in "fiu":
        raise MotionFormatError(name, f"motion has dtype {arr.dtype}, expected numbers")
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
        raise MotionFormatError(name, f"motion has shape {arr.shape}, expected [frames, 24, 3]")
    if arr.shape[0] < min_frames:
        raise MotionFormatError(name, f"motion has {arr.shape[0]} frames, fewer than the "
                                f"{min_frames} requested")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr).all(axis=(1, 2)))[:, 0]
        raise MotionFormatError(name, f"motion has NaN/Inf values in {len(bad)} frame(s), first "
                                f"at frame {int(bad[0])}")
    check_coordinates_mm(arr, name, max_abs_mm)
    return arr.astype(np.float32)


def read_clips(path: str | os.PathLike, **rule) -> list[MotionClip]:
    """All clips of one motion file, unvalidated. Raises `MotionFormatError` for unreadable files.

    `rule` holds the options of `pose_clips.read_pose_clips` (`missing`, `max_gap`, `limits`).
    Clips of a pickle are named `path[i]` (plus `#k` for the k-th stretch of a split raw file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: motion file not found")
    try:
        clips = read_pose_clips(path, **rule)
    except (MotionFormatError, UnsafePickleError):
        raise
    except Exception as e:  # noqa: BLE001 - unreadable content becomes one error naming the file
        raise MotionFormatError(path, f"cannot read motion ({type(e).__name__}: {e})") from e
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return [MotionClip(clips[0].motion, str(path), fps=clips[0].fps)]
    result = []
    for clip in clips:
        video = clip.video_path
        if video is not None and not os.path.isabs(video):
            video = str(path.parent / video)
        name = f"{path}[{clip.item}]" + ("" if clip.part is None else f"#{clip.part}")
        result.append(MotionClip(clip.motion, name, video, clip.fps))
    return result


def motion_files(path: str | os.PathLike) -> list[Path]:
    """`path` itself, or the motion files in a folder (sorted, recursive)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if p.suffix.lower() in MOTION_SUFFIXES and p.is_file())
    return [path]


def load_clips(path: str | os.PathLike, min_frames: int = 1, skip_bad: bool = False, **rule
               ) -> tuple[list[MotionClip], list[str]]:
    """Validated clips from a file or folder, and the errors of the clips that were skipped.

    With `skip_bad=False` the first bad file or clip raises; with `skip_bad=True` it is left out
    and its error message is returned in the second list. `rule` is passed to `read_clips`.
    """
    clips, errors = [], []
    for file in motion_files(path):
        try:
            file_clips = read_clips(file, **rule)
        except (MotionFormatError, UnsafePickleError, OSError) as e:
            if not skip_bad:
                raise
            errors.append(str(e))
            continue
        for clip in file_clips:
            try:
                motion = validate_motion(clip.motion, clip.name, min_frames)
            except MotionFormatError as e:
                if not skip_bad:
                    raise
                errors.append(str(e))
                continue
            clips.append(dataclasses.replace(clip, motion=motion))
    if not clips and not errors:
        raise FileNotFoundError(f"{path}: no motion files ({', '.join(MOTION_SUFFIXES)}) found")
    return clips, errors
