"""LayerNorm and RMSNorm as the released PyTorch models compute them: statistics in float32,
the result cast back to the input dtype (or to an explicit `dtype`).

One module per norm, with the variants as arguments:
* `epsilon`;
* affine parameters (`use_scale` / `use_bias` for LayerNorm; RMSNorm always has a `scale`);
* `logical_axes`: None creates plain parameters; a tuple (one name or None per parameter axis)
  creates them through `nn.with_logical_partitioning`, so a sharding step maps them to mesh axes;
* `num_axes` (RMSNorm): how many trailing axes are normalised together (2: the full n·d width of
  a `[..., n, d]` tensor, the scale shaped `[n, d]`).

LayerNorm applies its affine in float32 before the cast (torch `nn.LayerNorm`); RMSNorm casts
first and multiplies by the scale in the output dtype (Wan's and T5's RMSNorm).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

LogicalAxes = tuple[str | None, ...] | None


def _float32_or_wider(x):
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def layer_norm_f32(x, epsilon: float = 1e-6):
    """Non-affine LayerNorm over the last axis in float32 (population variance); returns
    float32. Its backward pass reads the saved output and 1/σ (`_normalize`)."""
    return _normalize(_float32_or_wider(x), epsilon)


def _normalize_fwd(xf, epsilon):
    mean = xf.mean(axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(xf - mean).mean(axis=-1, keepdims=True) + epsilon)
    y = (xf - mean) * rstd
    return y, (y, rstd)


def _normalize_bwd(epsilon, residuals, g):
    """dx = (g − mean(g) − y·mean(g·y)) / σ: no statistics recomputed from x, so XLA does not
    fuse the reductions into the consumers of the normalised activations."""
    y, rstd = residuals
    return (rstd * (g - g.mean(axis=-1, keepdims=True)
                    - y * (g * y).mean(axis=-1, keepdims=True)),)


_normalize = jax.custom_vjp(lambda xf, epsilon: _normalize_fwd(xf, epsilon)[0],
                            nondiff_argnums=(1,))
_normalize.defvjp(_normalize_fwd, _normalize_bwd)



def _param(module: nn.Module, name: str, init: Callable, shape: tuple, axes: LogicalAxes):
    if axes is not None:
        init = nn.with_logical_partitioning(init, tuple(axes))
    return module.param(name, init, shape, module.param_dtype)


class LayerNorm(nn.Module):
    """torch LayerNorm over the last axis: float32 statistics and affine, then the cast."""

    epsilon: float = 1e-6
    use_scale: bool = True
    use_bias: bool = True
    logical_axes: LogicalAxes = None
    dtype: Any = None           # output dtype (None: the input's)
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = layer_norm_f32(x, self.epsilon)
        shape = (x.shape[-1],)
        if self.use_scale:
            y = y * _param(self, "scale", nn.initializers.ones, shape, self.logical_axes)
        if self.use_bias:
            y = y + _param(self, "bias", nn.initializers.zeros, shape, self.logical_axes)
        return y.astype(self.dtype or x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) over the last `num_axes` axes in float32, cast to the output
    dtype, then times the `scale` (cast to that dtype); no mean, no bias."""

    epsilon: float = 1e-6
    num_axes: int = 1
    logical_axes: LogicalAxes = None
    dtype: Any = None           # output dtype (None: the input's)
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        axes = tuple(range(-self.num_axes, 0))
        xf = _float32_or_wider(x)
        y = xf * jax.lax.rsqrt(jnp.square(xf).mean(axis=axes, keepdims=True) + self.epsilon)
        dtype = self.dtype or x.dtype
        scale = _param(self, "scale", nn.initializers.ones, x.shape[-self.num_axes:],
                       self.logical_axes)
        return y.astype(dtype) * scale.astype(dtype)
