"""A restricted unpickler for motion files written by the reference pose-extraction step.

A pickle can call any importable function while it loads. `load_pickle` admits only plain
containers (list, dict, tuple, set), strings, bytes, numbers, booleans, None and numpy arrays,
dtypes and scalars; a pickle that names any other global fails with `UnsafePickleError` before
anything it names is called. Object-dtype arrays are refused as well, since their elements are
arbitrary Python objects.
"""
from __future__ import annotations

import io
import os
import pickle

import numpy as np

# (module, name) pairs a motion pickle may reference: how numpy arrays, dtypes and scalars pickle.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something other than plain data."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load, the pickle references '{module}.{name}'; only plain "
            "containers, strings, numbers and numpy arrays are allowed in motion files")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: refusing to load persistent id {pid!r}")


def _reject_object_arrays(obj, source: str):
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise UnsafePickleError(f"{source}: refusing object-dtype array of shape {obj.shape}")
    if isinstance(obj, dict):
        for value in obj.values():
            _reject_object_arrays(value, source)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            _reject_object_arrays(value, source)


def loads_pickle(data: bytes, source: str = "<bytes>"):
    """Unpickles `data` with the restricted loader; `source` names it in errors."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed stream becomes one clear error
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from e
    _reject_object_arrays(obj, source)
    return obj


def load_pickle(path: str | os.PathLike):
    """Loads a pickle file with the restricted loader."""
    with open(path, "rb") as f:
        return loads_pickle(f.read(), source=os.fspath(path))
