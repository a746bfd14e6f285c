"""Refusing to report `nan` as a command's result: which numbers of a result are not finite."""
from __future__ import annotations

import math

import numpy as np

from mtvjax.errors import UserError


class NonFiniteResult(UserError):
    """A command's result holds NaN or Inf (the inputs or the checkpoint are broken)."""


def non_finite_numbers(tree, prefix: str = "") -> list[str]:
    """Dotted paths of the NaN/Inf numbers (floats or float arrays) in nested dicts and lists."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        if isinstance(tree, float):
            return [] if math.isfinite(tree) else [prefix or "value"]
        if isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
            return [] if np.isfinite(tree).all() else [prefix or "value"]
        return []
    bad = []
    for key, value in items:
        bad += non_finite_numbers(value, f"{prefix}.{key}" if prefix else str(key))
    return bad
