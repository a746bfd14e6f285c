"""A restricted unpickler for motion files written by the reference pose-extraction step.

A pickle can call any importable function while it loads. `load_pickle` admits only plain
containers (list, dict, tuple, set, OrderedDict), strings, bytes, numbers, booleans, None, numpy
arrays, dtypes and scalars, and torch tensors, which `torch_pickle` rebuilds as numpy arrays
without torch; a pickle that names any other global fails with `UnsafePickleError` before
anything it names is called. Object-dtype arrays are refused as well, since their elements are
arbitrary Python objects.

The decoded object is then walked once per distinct object (shared references are not walked
again) and refused with `LimitExceededError` when copying every path out of it, as downstream
conversion does, would exceed `LoadLimits`: bytes, nesting depth, entries.
"""
from __future__ import annotations

import io
import os
import pickle

import numpy as np

from mtvjax.data.load_limits import DEFAULT_LIMITS, DecodeBudget, LoadLimits, check_file_size
from mtvjax.data.motion_errors import LimitExceededError, UnsafePickleError
from mtvjax.data.torch_pickle import torch_global

__all__ = ["LimitExceededError", "LoadLimits", "UnsafePickleError", "check_tree", "load_pickle",
           "loads_pickle"]

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


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, budget: DecodeBudget, storage_ids=None):
        super().__init__(file)
        self._budget = budget
        self._storage_ids = storage_ids

    def _nested(self, file, storage_ids=None) -> "_RestrictedUnpickler":
        return _RestrictedUnpickler(file, self._budget, storage_ids)

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        found = torch_global(module, name, self._budget, self._nested)
        if found is not None:
            return found
        raise UnsafePickleError(
            f"{self._budget.source}: refusing to load, the pickle references '{module}.{name}'; "
            "only plain containers, strings, numbers, numpy arrays and torch tensors are allowed "
            "in motion files")

    def persistent_load(self, pid):
        if self._storage_ids is None:
            raise UnsafePickleError(f"{self._budget.source}: refusing to load persistent id {pid!r:.80}")
        return self._storage_ids(pid)


def _leaf_size(node, source) -> int:
    if isinstance(node, np.ndarray):
        if node.dtype.hasobject:
            raise UnsafePickleError(f"{source}: refusing object-dtype array of shape {node.shape}")
        return node.nbytes
    if isinstance(node, (str, bytes, bytearray)):
        return len(node)
    return 8


def check_tree(obj, source, limits: LoadLimits = DEFAULT_LIMITS):
    """Refuses object arrays, and objects whose full expansion exceeds `limits` (see module doc).

    Each distinct object is visited once; its expanded bytes, entries and height are remembered.
    """
    seen: dict[int, tuple[int, int, int] | None] = {}  # id -> (bytes, entries, height)

    def over(what: str, value, limit):
        return LimitExceededError(source, f"refusing to load: the pickle's {what} is over "
                                  f"{limit} ({value}, counting every reference to shared objects)")

    def walk(node, depth: int) -> tuple[int, int, int]:
        if depth > limits.max_depth:
            raise over("nesting depth", depth, limits.max_depth)
        key = id(node)
        if key in seen:
            if seen[key] is None:
                raise LimitExceededError(source, "refusing to load: the pickle contains itself")
            if depth + seen[key][2] > limits.max_depth:
                raise over("nesting depth", depth + seen[key][2], limits.max_depth)
            return seen[key]
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
        elif isinstance(node, (list, tuple, set, frozenset)):
            children = node
        else:
            seen[key] = (_leaf_size(node, source), 1, 0)
            return seen[key]
        seen[key] = None
        nbytes, entries, height = 0, 1, 0
        for child in children:
            b, n, h = walk(child, depth + 1)
            nbytes, entries, height = nbytes + b, entries + n, max(height, h + 1)
            if nbytes > limits.max_bytes:
                raise over("data", f"{nbytes} bytes", f"{limits.max_bytes} bytes")
            if entries > limits.max_items:
                raise over("number of entries", entries, limits.max_items)
        seen[key] = (nbytes, entries, height)
        return seen[key]

    walk(obj, 0)


def loads_pickle(data: bytes, source: str = "<bytes>", limits: LoadLimits = DEFAULT_LIMITS):
    """Unpickles `data` with the restricted loader; `source` names it in errors."""
    budget = DecodeBudget(source, limits)
    budget.add(len(data), "the pickle")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), budget).load()
    except (UnsafePickleError, LimitExceededError):
        raise
    except Exception as e:  # noqa: BLE001 - any malformed stream becomes one clear error
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from e
    check_tree(obj, source, limits)
    return obj


def load_pickle(path: str | os.PathLike, limits: LoadLimits = DEFAULT_LIMITS):
    """Loads a pickle file with the restricted loader."""
    check_file_size(path, limits)
    with open(path, "rb") as f:
        return loads_pickle(f.read(), source=os.fspath(path), limits=limits)
