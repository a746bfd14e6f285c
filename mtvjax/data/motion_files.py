"""Motion clips read from users' files: MTVCrafter `.pkl`, `.npy` and `.npz` joint arrays.

A clip is SMPL joint motion `[frames, 24, 3]` float32 in camera-space millimetres. Every loader
validates what it reads and raises `MotionFormatError` naming the file and clip; `load_clips`
with `skip_bad=True` instead collects those errors so a long run can skip and count them.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mtvjax.data.safe_pickle import UnsafePickleError, load_pickle
from mtvjax.data.skeleton import NUM_JOINTS

MOTION_SUFFIXES = (".pkl", ".npy", ".npz")
NPZ_KEYS = ("motion", "joints", "pose", "poses3d")


class MotionFormatError(ValueError):
    """A motion file (or one clip in it) cannot be used; the message starts with its source."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class MotionClip:
    motion: np.ndarray          # [frames, 24, 3] float32, millimetres
    name: str                   # file path plus clip index, for error messages and logs
    video_path: str | None = None


def validate_motion(motion, name: str, min_frames: int = 1) -> np.ndarray:
    """Returns `motion` as float32 `[frames, 24, 3]` or raises `MotionFormatError` naming `name`."""
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
    return arr.astype(np.float32)


def _clips_from_pickle(path: Path) -> list[MotionClip]:
    data = load_pickle(path)
    items = data if isinstance(data, list) else [data]
    clips = []
    for i, item in enumerate(items):
        name = f"{path}[{i}]"
        if not isinstance(item, dict) or "pose" not in item:
            raise MotionFormatError(name, f"expected a dict with a 'pose' entry "
                                    f"(MTVCrafter format), got {type(item).__name__}")
        video = item.get("video_path")
        if isinstance(video, str) and not os.path.isabs(video):
            video = str(path.parent / video)
        clips.append(MotionClip(item["pose"], name, video if isinstance(video, str) else None))
    return clips


def _clips_from_array_file(path: Path) -> list[MotionClip]:
    if path.suffix == ".npy":
        return [MotionClip(np.load(path, allow_pickle=False), str(path))]
    with np.load(path, allow_pickle=False) as npz:
        keys = [k for k in NPZ_KEYS if k in npz.files] or (npz.files if len(npz.files) == 1 else [])
        if not keys:
            raise MotionFormatError(path, f"no motion array; expected one of {NPZ_KEYS} or a "
                                    f"single array, found {npz.files}")
        return [MotionClip(npz[keys[0]], str(path))]


def read_clips(path: str | os.PathLike) -> list[MotionClip]:
    """All clips of one motion file, unvalidated. Raises `MotionFormatError` for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: motion file not found")
    try:
        if path.suffix == ".pkl":
            return _clips_from_pickle(path)
        if path.suffix in (".npy", ".npz"):
            return _clips_from_array_file(path)
    except (MotionFormatError, UnsafePickleError):
        raise
    except Exception as e:  # noqa: BLE001 - unreadable content becomes one error naming the file
        raise MotionFormatError(path, f"cannot read motion ({type(e).__name__}: {e})") from e
    raise MotionFormatError(path, f"unknown motion file type; expected one of {MOTION_SUFFIXES}")


def motion_files(path: str | os.PathLike) -> list[Path]:
    """`path` itself, or the motion files in a folder (sorted, recursive)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in MOTION_SUFFIXES and p.is_file())
    return [path]


def load_clips(path: str | os.PathLike, min_frames: int = 1, skip_bad: bool = False
               ) -> tuple[list[MotionClip], list[str]]:
    """Validated clips from a file or folder, and the errors of the clips that were skipped.

    With `skip_bad=False` the first bad file or clip raises; with `skip_bad=True` it is left out
    and its error message is returned in the second list.
    """
    clips, errors = [], []
    for file in motion_files(path):
        try:
            file_clips = read_clips(file)
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
