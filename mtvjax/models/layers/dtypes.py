"""Config names of dtypes, matmul precisions and rematerialisation policies, shared by every
model and step.

Configs carry dtypes as strings ("float32", "bfloat16", "float16"), the matmul precision as a
name and remat as a policy name; `DTYPES` and `remat_policy` turn them into the JAX objects, the
`check_*` functions validate a config's fields.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
PRECISIONS = (None, "default", "high", "highest")   # matmul precision names

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "nothing_saveable", "everything_saveable")


def check_dtype_fields(config, names=("dtype", "param_dtype")) -> None:
    """Raises ValueError when one of the string fields `names` of `config` is not in `DTYPES`."""
    for name in names:
        if getattr(config, name) not in DTYPES:
            raise ValueError(f"unknown {name} {getattr(config, name)!r}; "
                             f"expected one of {sorted(DTYPES)}")


def check_precision_field(config) -> None:
    """Raises ValueError when `config.precision` is not one of `PRECISIONS`."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {config.precision!r}; expected one of {PRECISIONS}")


def remat_policy(name: str | None):
    """(use_remat, policy) for a config name: "none" (or "" / None) → no rematerialisation;
    "full" → recompute everything in the backward pass; otherwise a `jax.checkpoint_policies`
    member by name (e.g. "dots_saveable")."""
    if name in ("none", "", None):
        return False, None
    if name == "full":
        return True, jax.checkpoint_policies.nothing_saveable
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None or not callable(policy):
        raise ValueError(f"unknown remat policy {name!r}; expected one of {REMAT_POLICIES} or "
                         "another jax.checkpoint_policies name")
    return True, policy
