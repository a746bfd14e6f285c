"""Small facts about parameter trees shared by every model module."""
from __future__ import annotations

import math

import jax


def count_params(tree) -> int:
    """Number of values in a tree of arrays or ShapeDtypeStructs."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
