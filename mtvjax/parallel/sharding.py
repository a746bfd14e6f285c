"""The one interpreter of logical axis names: PartitionSpecs and NamedShardings on a mesh.

Modules annotate parameters with `nn.with_logical_partitioning(init, ("embed", "mlp"))`, and
batches and activations name their dimensions the same way (`batch`, `embed`, ...). A config's
`sharding_rules` maps each logical name to a mesh axis, a tuple of mesh axes, or None; code names
logical axes and never mesh axes. A mesh axis is used at most once per array: a dimension whose
mesh axes an earlier dimension already took stays unsharded (the 7B's
`time_embedding/linear_2` kernel is `[time_embed, time_embed]`).

Activations: inside `activation_sharding(mesh, rules)` (entered around tracing, as the trainer
does for its step), model code pins an activation's layout with `constrain(x, logical_axes)` and
reads the active mesh and rules with `active_rules()`; outside it both are no-ops, so the same
model runs unchanged on one device.

`init_sharded` evaluates an initialiser abstractly (`jax.eval_shape`), turns the logical names
into `NamedSharding`s and runs the initialiser under `jit` with those `out_shardings`, so every
device creates only its own shard and no host ever holds the full model. Optimiser states built
from boxed parameters inherit their names, so one call shards parameters and optimiser state.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple]
_ACTIVE_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("rules", default=None)


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
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules_on(rules, mesh.axis_names)))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
    """Within: `constrain` and context-parallel attention shard on `mesh` by `rules`. Enter it
    around the first call (the trace) of a jitted function; jax.jit keys its cache on the mesh."""
    token = _ACTIVE_RULES.set(tuple(tuple(r) for r in rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE_RULES.reset(token)


def active_rules() -> Rules | None:
    """The rules of the enclosing `activation_sharding`, or None outside one; mesh axes the
    active mesh lacks (e.g. `context` on a mesh without it) are dropped (never sharded)."""
    mesh, rules = jax.sharding.get_abstract_mesh(), _ACTIVE_RULES.get()
    if mesh.empty or rules is None:
        return None
    return rules_on(rules, mesh.axis_names)


def rules_on(rules: Rules, mesh_axes) -> Rules:
    """`rules` without the mesh axes a mesh lacks (a logical axis left with none: unsharded)."""
    names = set(mesh_axes)

    def present(axes):
        kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a in names)
        return kept or None
    return tuple((name, present(axes)) for name, axes in rules)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`x` pinned to the layout its logical names give under `activation_sharding` (else `x`);
    a dimension its mesh axes do not divide (a batch of 1 or 2 while sampling) stays whole."""
    rules = active_rules()
    if rules is None:
        return x
    sizes = dict(jax.sharding.get_abstract_mesh().shape)

    def divides(axes, size: int) -> bool:
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        return size % int(np.prod([sizes[n] for n in names])) == 0

    spec = logical_to_spec(logical_axes, rules)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*[
        axes if axes is not None and divides(axes, x.shape[i]) else None
        for i, axes in enumerate(spec)]))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(abstract_boxed_state, mesh: Mesh, rules: Rules):
    """NamedSharding of every leaf of a boxed (abstract) state, in its unboxed structure."""
    specs = nn.get_partition_spec(abstract_boxed_state)
    rules = rules_on(rules, mesh.axis_names)
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


def param_shardings(logical_axes, shapes, mesh: Mesh, rules: Rules):
    """NamedSharding of every leaf of an unboxed tree (`shapes`: arrays or ShapeDtypeStructs)
    from its logical names (`logical_axes`: PartitionSpecs of names, as `nn.get_partition_spec`
    gives). Mesh axes the mesh lacks are dropped from the rules; a dimension its mesh axes do not
    divide stays unsharded, so a checkpoint of any size loads onto any mesh (inference placement;
    `state_shardings` keeps training strict)."""
    def fits(axes, size: int) -> bool:
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        return size % int(np.prod([mesh.shape[n] for n in names])) == 0

    rules = rules_on(rules, mesh.axis_names)

    def one(logical, x):
        spec = logical_to_spec(tuple(logical), rules)
        return NamedSharding(mesh, PartitionSpec(*[
            axes if axes is not None and fits(axes, x.shape[i]) else None
            for i, axes in enumerate(spec)]))
    return jax.tree.map(one, logical_axes, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))
