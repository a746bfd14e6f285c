"""Bounds on what loading one motion file may decode, and `.npy`/`.npz` readers that keep them.

A small file can describe a great deal of data: a pickle can reference one object from many
places (a 37 KB pickle of lists sharing their items describes 2^64 entries), and a zip member can
inflate a thousandfold. `LoadLimits` caps the bytes a file may expand to (every reference to a
shared object counted, as `np.asarray`/`np.stack` downstream would copy it), its nesting depth
and its number of entries. The defaults are far above real pose files (a 10-minute video of
NLF poses is about 5 MB). `read_npy`/`read_npz` check the file size and every member's declared
shape and dtype before reading any array data.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from mtvjax.data.motion_errors import LimitExceededError, MotionFormatError

MAX_BYTES = 1 << 30        # 1 GiB, counting every reference to shared objects
MAX_DEPTH = 32             # nesting of containers (real pose pickles nest about 5 deep)
MAX_ITEMS = 10_000_000     # container entries, counting every reference
MAX_ABS_MM = 1e5           # 100 m from the camera: beyond it a "motion" is not one in millimetres


@dataclasses.dataclass(frozen=True)
class LoadLimits:
    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH
    max_items: int = MAX_ITEMS


DEFAULT_LIMITS = LoadLimits()


def check_coordinates_mm(motion: np.ndarray, source, max_abs_mm: float = MAX_ABS_MM) -> None:
    """Raises `MotionFormatError` naming `source` when finite `motion` (mm) holds coordinates
    beyond `max_abs_mm`: wrong units or garbage."""
    if motion.size and np.abs(motion).max() > max_abs_mm:
        frame = int(np.argmax(np.abs(motion).reshape(len(motion), -1).max(axis=1) > max_abs_mm))
        raise MotionFormatError(source, f"motion has coordinates beyond {max_abs_mm:g} mm (first at "
                                f"frame {frame}: {float(np.abs(motion[frame]).max()):.3g}); "
                                "expected camera-space millimetres")


def check_bytes(nbytes: int, source, what: str, limits: LoadLimits):
    """Raises `LimitExceededError` naming `source` when `nbytes` is over `limits.max_bytes`."""
    if nbytes > limits.max_bytes:
        raise LimitExceededError(source, f"refusing to load: {what} {nbytes} bytes, more than the "
                                 f"limit of {limits.max_bytes}")


class DecodeBudget:
    """The running total of bytes decoded from one file, checked against `limits.max_bytes`."""

    def __init__(self, source, limits: LoadLimits = DEFAULT_LIMITS):
        self.source = source
        self.limits = limits
        self.total = 0

    def add(self, nbytes: int, what: str):
        self.total += nbytes
        check_bytes(self.total, self.source, f"decoding {what} brings the data to", self.limits)


def check_file_size(path, limits: LoadLimits = DEFAULT_LIMITS) -> int:
    size = os.path.getsize(path)
    check_bytes(size, path, "the file has", limits)
    return size


def _check_header(fileobj, name: str, source, limits: LoadLimits) -> int:
    """Reads a `.npy` header; returns the data bytes it declares after checking them."""
    version = np.lib.format.read_magic(fileobj)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fileobj)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fileobj)
    else:
        raise MotionFormatError(source, f"{name}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise MotionFormatError(source, f"{name}: refusing an object-dtype array (needs pickle)")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    check_bytes(nbytes, source, f"array {name!r} declares", limits)
    return nbytes


def read_npy(path, limits: LoadLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A `.npy` array, read without pickle after checking its declared size against the file."""
    size = check_file_size(path, limits)
    with open(path, "rb") as f:
        nbytes = _check_header(f, os.path.basename(path), path, limits)
        if nbytes > size:
            raise MotionFormatError(path, f"the header declares {nbytes} bytes of data, more "
                                    f"than the file's {size}")
    return np.load(path, allow_pickle=False)


def read_npz(path, limits: LoadLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """All arrays of an `.npz`, read without pickle; every member's declared size is checked first
    (each and in total) so a zip bomb is refused before it is inflated."""
    check_file_size(path, limits)
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > limits.max_items:
            raise LimitExceededError(path, f"refusing to load: {len(members)} archive members, "
                                     f"more than the limit of {limits.max_items}")
        total = 0
        for info in members:
            total += info.file_size
            check_bytes(total, path, "the archive members inflate to", limits)
            with archive.open(info) as member:
                declared = _check_header(member, info.filename, path, limits)
            if declared > info.file_size:
                raise MotionFormatError(path, f"{info.filename}: declares {declared} bytes of "
                                        f"data, more than the member's {info.file_size}")
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}
