"""Device meshes from a config, and shardings from logical axis names.

`config.mesh` maps mesh-axis names to sizes (-1: all remaining devices); `config.sharding_rules`
is the table logical axis name → mesh axis (or None), declared once per config. Code names
logical axes (`batch`, `embed`, ...) and never mesh axes.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


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


def logical_to_spec(logical_axes: Sequence[str | None],
                    rules: Sequence[tuple[str, str | None]]) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry these logical names."""
    table = dict(rules)
    return PartitionSpec(*(table.get(name) if name else None for name in logical_axes))


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None],
                   rules: Sequence[tuple[str, str | None]]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
