"""Plain joint arrays: `.npy` or `.npz` holding `[frames, 24, 3]` camera-space millimetres.

Read by the shared rule of `mtvjax.data.pose_clips` (without pickle, sizes checked before any
data is read): in an `.npz` the motion is the array under the first of `pose_clips.MOTION_KEYS`
present, or the archive's only array; an optional scalar `fps` and an optional `confidence`
`[frames, 24]` are used when present. Integer arrays become float32. The data is taken to be SMPL
joints already in NLF camera space; nothing is moved or rescaled.
"""
from __future__ import annotations

import os
import zipfile

from mtvjax.data.motion_errors import MotionFormatError
from mtvjax.data.pose_clips import read_pose_clips

from data_pipeline.readers.ingested_record import MotionRecord, make_record

DEFAULT_FPS = 30.0


def load_joint_array(path: str | os.PathLike, fps: float | None = None,
                     default_fps: float = DEFAULT_FPS) -> list[MotionRecord]:
    """Loads a `.npy`/`.npz` joint array as one record (convention "smpl").

    Args:
      fps: frame rate; None uses the archive's `fps` entry, else `default_fps`.
    """
    source = os.fspath(path)
    try:
        (clip,) = read_pose_clips(source)
    except MotionFormatError:
        raise
    except ValueError as e:  # e.g. object arrays, which need pickle
        raise MotionFormatError(source, f"cannot read array data ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise MotionFormatError(source, f"not a readable numpy file ({type(e).__name__}: {e})") from None
    rate = fps if fps is not None else clip.fps if clip.fps is not None else default_fps
    return [make_record(clip.motion, rate, source, confidence=clip.confidence, convention="smpl")]
