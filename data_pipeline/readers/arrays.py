"""Plain joint arrays: `.npy` or `.npz` holding `[frames, 24, 3]` camera-space millimetres.

Loaded with `allow_pickle=False`. In an `.npz` the motion is the array named `joints`, `motion`
or `pose` (first found), or the archive's only array; an optional scalar `fps` and an optional
`confidence` `[frames, 24]` are used when present. The data is taken to be SMPL joints already in
NLF camera space; nothing is moved or rescaled.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from mtvjax.data.motion_files import MotionFormatError

from data_pipeline.readers.ingested_record import MotionRecord, make_record

MOTION_KEYS = ("joints", "motion", "pose")
DEFAULT_FPS = 30.0


def _read(path: str, fn):
    try:
        return fn()
    except ValueError as e:  # object arrays need pickle, which is refused
        raise MotionFormatError(path, f"cannot read array data ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise MotionFormatError(path, f"not a readable numpy file ({type(e).__name__}: {e})") from None


def motion_from_npz(npz, path: str) -> str:
    """The name of the motion array in an opened `.npz`, or raises naming the file."""
    for key in MOTION_KEYS:
        if key in npz.files:
            return key
    if len(npz.files) == 1:
        return npz.files[0]
    raise MotionFormatError(
        path, f"no motion array: expected one of {list(MOTION_KEYS)} or a single array, found {npz.files}")


def load_joint_array(path: str | os.PathLike, fps: float | None = None,
                     default_fps: float = DEFAULT_FPS) -> list[MotionRecord]:
    """Loads a `.npy`/`.npz` joint array as one record (convention "smpl").

    Args:
      fps: frame rate; None uses the archive's `fps` entry, else `default_fps`.
    """
    source = os.fspath(path)
    confidence = None
    file_fps = None
    if source.lower().endswith(".npz"):
        def load():
            with np.load(source, allow_pickle=False) as npz:
                key = motion_from_npz(npz, source)
                conf = npz["confidence"] if "confidence" in npz.files and key != "confidence" else None
                rate = npz["fps"] if "fps" in npz.files and key != "fps" else None
                return npz[key], conf, rate
        motion, confidence, file_fps = _read(source, load)
    else:
        motion = _read(source, lambda: np.load(source, allow_pickle=False))
    if file_fps is not None:
        if np.size(file_fps) != 1 or not np.issubdtype(np.asarray(file_fps).dtype, np.number):
            raise MotionFormatError(source, f"'fps' must be a single number, got {file_fps!r}")
        file_fps = float(np.asarray(file_fps).reshape(()))
    rate = fps if fps is not None else file_fps if file_fps is not None else default_fps
    return [make_record(motion, rate, source, confidence=confidence, convention="smpl")]
