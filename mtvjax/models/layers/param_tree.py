"""Parameter trees of model modules built from one frozen config: abstract shapes, fresh
initialisation and value counts, shared by every model module.

A model module here is a Flax class constructed as `module_cls(config)` (a hashable frozen
config) whose `init` takes `dummy_inputs(config)`: the smallest inputs that create every
parameter. `param_functions` gives a model module its public `param_shapes(variant)` /
`init_params(variant, rng)` pair, with `variant` resolved to a config by the family's resolver.
"""
from __future__ import annotations

import functools
import math

import jax


@functools.lru_cache(maxsize=32)
def abstract_params(module_cls, config, dummy_inputs) -> dict:
    """`params` of `module_cls(config).init` as ShapeDtypeStructs (`jax.eval_shape`: nothing is
    allocated; cached per module class and config). Boxed leaves stay boxed."""
    model = module_cls(config)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *dummy_inputs(config)))[
        "params"]


def init_module_params(module_cls, config, dummy_inputs, rng) -> dict:
    """Freshly initialised `params` of `module_cls(config)` from `rng` (jitted init)."""
    model = module_cls(config)
    return jax.jit(lambda key: model.init(key, *dummy_inputs(config))["params"])(rng)


def param_functions(module_cls, resolve, dummy_inputs, default):
    """(param_shapes, init_params) of `module_cls(resolve(variant))`: `param_shapes(variant=
    default)` is `abstract_params`, `init_params(variant, rng)` is `init_module_params`."""

    def param_shapes(config=default) -> dict:
        """`params` as ShapeDtypeStructs (no allocation; cached per config)."""
        return abstract_params(module_cls, resolve(config), dummy_inputs)

    def init_params(config, rng) -> dict:
        """Freshly initialised params (random; not trained weights)."""
        return init_module_params(module_cls, resolve(config), dummy_inputs, rng)

    return param_shapes, init_params


@functools.lru_cache(maxsize=16)
def jitted_apply(module_cls, config):
    """`f(params, *inputs)`: `module_cls(config).apply` under `jax.jit` (cached per config)."""
    model = module_cls(config)
    return jax.jit(lambda params, *inputs: model.apply({"params": params}, *inputs))


def count_params(tree) -> int:
    """Number of values in a tree of arrays or ShapeDtypeStructs."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
