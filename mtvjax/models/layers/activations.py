"""Activations with a hand-written backward pass that keeps only the input as residual.

`gelu_tanh(x)` equals `jax.nn.gelu(x, approximate=True)` (torch's GELU(approximate="tanh")).
Autodiff of that formula saves several `x`-sized intermediates (x³, the tanh argument, tanh) for
the backward pass; in a scanned transformer each is stacked over the layers (an extra write, a
zero-filled buffer and a read per layer, for the `[tokens, 4·D]` feed-forward hidden state). The
`jax.custom_vjp` here saves `x` alone and recomputes tanh in the backward pass:

    d/dx gelu(x) = ½(1 + t) + ½·x·(1 − t²)·c·(1 + 3a·x²),  t = tanh(c·(x + a·x³)),
    c = √(2/π), a = 0.044715.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715


@jax.custom_vjp
def gelu_tanh(x):
    """tanh-approximated GELU (module docstring)."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
    return gelu_tanh(x), x


def _gelu_tanh_bwd(x, g):
    c, a = jnp.asarray(_C, x.dtype), jnp.asarray(_A, x.dtype)
    x2 = x * x
    t = jnp.tanh(c * x * (1 + a * x2))
    return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * a * x2)),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)
