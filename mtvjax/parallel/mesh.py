"""Device meshes from a config.

`config.mesh` maps mesh-axis names to sizes (-1: all remaining devices). Which logical axis goes
to which mesh axis is `config.sharding_rules`, interpreted by `mtvjax.parallel.sharding`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves one -1 entry to the devices left over; checks the product matches."""
    sizes = dict(axes)
    unknown = [name for name, size in sizes.items() if size == -1]
    if len(unknown) > 1:
        raise ValueError(f"mesh {sizes}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes.values() if s != -1]))
    if unknown:
        if num_devices % known:
            raise ValueError(f"mesh {sizes}: {num_devices} devices do not divide by {known}")
        sizes[unknown[0]] = num_devices // known
    if int(np.prod(list(sizes.values()))) != num_devices:
        raise ValueError(f"mesh {sizes} does not use exactly the {num_devices} devices")
    return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with the configured axis sizes."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(axes, len(devices))
    return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), tuple(sizes.keys()))
