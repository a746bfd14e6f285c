"""Shape-first, sharded initialisation of train states whose parameters carry logical axis names.

Modules annotate parameters with `nn.with_logical_partitioning(init, ("embed", "mlp"))`; a
config's `sharding_rules` maps those logical names to mesh axes. `init_sharded` evaluates the
initialiser abstractly (`jax.eval_shape`), turns the logical names into `NamedSharding`s on the
mesh, and runs the initialiser under `jit` with those `out_shardings`, so every device creates
only its own shard and no host ever holds the full model. Optimiser states built from boxed
parameters inherit their names, so one call shards parameters and optimiser state alike.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh


def state_shardings(abstract_boxed_state, mesh: Mesh, rules: Sequence[tuple]):
    """`NamedSharding` for every leaf of a (boxed) state, matching its unboxed structure."""
    logical_specs = nn.get_partition_spec(abstract_boxed_state)
    return nn.logical_to_mesh_sharding(logical_specs, mesh, tuple(tuple(r) for r in rules))


def init_sharded(init_fn: Callable, mesh: Mesh, rules: Sequence[tuple], *args):
    """Runs `init_fn(*args)` sharded as its logical annotations say; returns (state, shardings).

    The returned state is unboxed (plain arrays); `shardings` has the same structure and is what
    a train step's `in_shardings`/`out_shardings` should use for the state.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(init_fn, out_shardings=shardings)(*args)
    return nn.meta.unbox(state), shardings


def abstract_sharded(init_fn: Callable, mesh: Mesh, rules: Sequence[tuple], *args):
    """ShapeDtypeStructs (with shardings) of the unboxed state `init_fn(*args)` would make."""
    abstract = jax.eval_shape(init_fn, *args)
    shardings = state_shardings(abstract, mesh, rules)
    unboxed = nn.meta.unbox(abstract)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        unboxed, shardings)
