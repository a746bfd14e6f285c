"""The one interpreter of logical axis names: PartitionSpecs and NamedShardings on a mesh.

Modules annotate parameters with `nn.with_logical_partitioning(init, ("embed", "mlp"))`, and
batches and activations name their dimensions the same way (`batch`, `embed`, ...). A config's
`sharding_rules` maps each logical name to a mesh axis, a tuple of mesh axes, or None; code names
logical axes and never mesh axes. A mesh axis is used at most once per array: a dimension whose
mesh axes an earlier dimension already took stays unsharded (the 7B's
`time_embedding/linear_2` kernel is `[time_embed, time_embed]`).

`init_sharded` evaluates an initialiser abstractly (`jax.eval_shape`), turns the logical names
into `NamedSharding`s and runs the initialiser under `jit` with those `out_shardings`, so every
device creates only its own shard and no host ever holds the full model. Optimiser states built
from boxed parameters inherit their names, so one call shards parameters and optimiser state.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple]


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """PartitionSpec of one array whose dimensions carry these logical names."""
    table, used, out = dict(rules), set(), []
    for name in logical_axes:
        axes = table.get(name) if name else None
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if not flat or used & set(flat):
            out.append(None)
            continue
        used.update(flat)
        out.append(axes if isinstance(axes, str) else tuple(axes))
    return PartitionSpec(*out)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules: Rules) -> NamedSharding:
    """NamedSharding of one array (a batch, an activation) from its logical names."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(abstract_boxed_state, mesh: Mesh, rules: Rules):
    """NamedSharding of every leaf of a boxed (abstract) state, in its unboxed structure."""
    specs = nn.get_partition_spec(abstract_boxed_state)
    return jax.tree.map(lambda s: NamedSharding(mesh, logical_to_spec(s, rules)), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def init_sharded(init_fn: Callable, mesh: Mesh, rules: Rules, *args):
    """(unboxed state, shardings): `init_fn(*args)` run under jit with each leaf created in its
    sharding; `shardings` is what a train step's `out_shardings` should use for the state."""
    shardings = state_shardings(jax.eval_shape(init_fn, *args), mesh, rules)
    state = jax.jit(init_fn, out_shardings=shardings)(*args)
    return nn.meta.unbox(state), shardings


def abstract_sharded(init_fn: Callable, mesh: Mesh, rules: Rules, *args):
    """ShapeDtypeStructs with shardings of the unboxed state `init_fn(*args)` would make."""
    abstract = jax.eval_shape(init_fn, *args)
    shardings = state_shardings(abstract, mesh, rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.meta.unbox(abstract), shardings)
