"""One entry point for every motion input: dispatch by file type, and scan folders without stopping.

`load_motion_file` picks the reader by suffix: `.pkl`/`.pickle` (MTVCrafter/NLF pickles),
`.npy` (joint arrays), `.npz` (SMPL parameters when it has `poses`, joint arrays otherwise),
`.bvh` (motion capture). Options are passed to the readers that take them, so one set of
options (say `target_fps=30, fps=None`) can serve a whole mixed folder; an option no reader
takes is a `TypeError`.

`scan_inputs` walks files and folders and returns the records it could read plus one
`IngestError(path, message)` per file it could not, so a bad file is reported and skipped.
"""
from __future__ import annotations

import inspect
import os
import pickle
import zipfile
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from mtvjax.data.motion_errors import MotionFormatError

from data_pipeline.readers.arrays import load_joint_array
from data_pipeline.readers.bvh import load_bvh
from data_pipeline.readers.ingested_record import MotionRecord
from data_pipeline.readers.nlf import load_nlf_pickle
from data_pipeline.readers.smpl_params import is_smpl_params, load_smpl_params

SUFFIXES = (".pkl", ".pickle", ".npy", ".npz", ".bvh")


class IngestError(NamedTuple):
    """A file `scan_inputs` could not read, and why."""

    path: str
    message: str


def _npz_loader(path: str):
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise MotionFormatError(path, f"not a readable .npz archive ({e})") from None
    return load_smpl_params if is_smpl_params(keys) else load_joint_array


def _loader_for(path: str):
    suffix = Path(path).suffix.lower()
    if suffix in (".pkl", ".pickle"):
        return load_nlf_pickle
    if suffix == ".npy":
        return load_joint_array
    if suffix == ".npz":
        return _npz_loader(path)
    if suffix == ".bvh":
        return load_bvh
    raise MotionFormatError(path, f"unsupported file type {suffix or '(no suffix)'!r}; "
                            f"expected one of {', '.join(SUFFIXES)}")


_READERS = (load_nlf_pickle, load_joint_array, load_smpl_params, load_bvh)
_KNOWN_OPTIONS = {name for fn in _READERS for name in list(inspect.signature(fn).parameters)[1:]}


def _check_options(options: dict):
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        raise TypeError(f"unknown ingestion option(s) {unknown}; known: {sorted(_KNOWN_OPTIONS)}")


def load_motion_file(path: str | os.PathLike, **options) -> list[MotionRecord]:
    """Reads one motion file as a list of validated records.

    Raises:
      MotionFormatError: unsupported suffix or unusable content (the message starts with the path).
      mtvjax.data.safe_pickle.UnsafePickleError: a pickle that references code.
      OSError: the file cannot be opened.
      TypeError: an option no reader takes.
    """
    _check_options(options)
    source = os.fspath(path)
    loader = _loader_for(source)
    accepted = inspect.signature(loader).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    try:
        return loader(source, **kwargs)
    except (MotionFormatError, pickle.UnpicklingError, OSError):
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, EOFError, UnicodeError) as e:
        raise MotionFormatError(source, f"unusable content ({type(e).__name__}: {e})") from e


def iter_input_files(paths: Iterable[str | os.PathLike] | str | os.PathLike):
    """Yields the given files, and the supported files under the given folders (sorted, recursive)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                        yield os.path.join(root, name)
        else:
            yield p


def scan_inputs(paths: Iterable[str | os.PathLike] | str | os.PathLike,
                **options) -> tuple[list[MotionRecord], list[IngestError]]:
    """Loads every motion file under `paths`, collecting per-file errors instead of stopping.

    Folders are walked recursively and only files with a supported suffix are read there; a file
    named explicitly is always tried (an unsupported one is reported). Options are those of
    `load_motion_file`.

    Returns:
      (records, errors): all records read, in file order, and one `IngestError` per bad file.
    """
    _check_options(options)
    records: list[MotionRecord] = []
    errors: list[IngestError] = []
    seen = set()
    for path in iter_input_files(paths):
        key = os.path.abspath(path)
        if key in seen:
            continue
        seen.add(key)
        try:
            records.extend(load_motion_file(path, **options))
        except (ValueError, pickle.UnpicklingError, OSError) as e:
            errors.append(IngestError(path, str(e)))
    return records, errors
