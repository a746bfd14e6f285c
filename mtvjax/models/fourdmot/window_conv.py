"""The 2-D convolution of 4DMoT over `[batch, frames, joints, channels]`, as matrix products.

4DMoT convolves short windows: 2 to 9 frames, 24 joints, 'same' zero padding. A padded
convolution spends up to a third of its work on zero frames (a 3-tap kernel over a 2-frame
window), and XLA's CPU backward convolutions run well below its matrix products. `WindowConv`
computes the same result as `nn.Conv` with only the products that touch real frames:

- joint taps become input columns `[..., joints, kw * in]` (gathered once, one product per
  temporal tap) when `in <= out`; otherwise each joint tap is its own product on the narrower
  input and its output is shifted into place;
- each temporal tap multiplies just the frames it reaches and adds into the frames it writes.

`impl="lax"` runs `lax.conv_general_dilated` on the same parameters instead: the reference the
tests compare against, and the formulation whose XLA cost analysis counts the model's FLOPs.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

IMPLS = ("matmul", "lax")


def _shift(x: jnp.ndarray, axis: int, offset: int) -> jnp.ndarray:
    """`y[i] = x[i + offset]` along `axis`, zero where `i + offset` falls outside."""
    n = x.shape[axis]
    kept = jax.lax.slice_in_dim(x, max(0, offset), n + min(0, offset), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (max(0, -offset), max(0, offset))
    return jnp.pad(kept, pad)


def _tap_offsets(size: int, dilation: int) -> list[int]:
    return [(i - size // 2) * dilation for i in range(size)]


def _joint_columns(x: jnp.ndarray, kw: int, dilation: int) -> jnp.ndarray:
    """`[..., J, in]` → `[..., J, kw * in]`: the joint taps of every position, zero outside."""
    if kw == 1:
        return x
    return jnp.concatenate([_shift(x, x.ndim - 2, o) for o in _tap_offsets(kw, dilation)], -1)


def _joint_products(x: jnp.ndarray, kernel: jnp.ndarray, dilation: int) -> jnp.ndarray:
    """Joint convolution of `x [..., J, in]` with `kernel [kw, in, out]`, one product per tap."""
    offsets = _tap_offsets(kernel.shape[0], dilation)
    return sum(_shift(_rows_matmul(x, tap), x.ndim - 2, o)
               for tap, o in zip(_taps(kernel), offsets))


def _taps(kernel: jnp.ndarray) -> list[jnp.ndarray]:
    """`kernel[i]` for every i along the first axis, by one split: its gradient is then one
    concatenation rather than a zero-padded full-size kernel per tap, summed."""
    return [tap[0] for tap in jnp.split(kernel, kernel.shape[0])]


def _rows_matmul(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """`x [..., in] @ kernel [in, out]` as one 2-D product over the flattened rows. Written so,
    the weight gradient's transposes are 2-D ([rows, out] → [out, rows]), which XLA:CPU runs
    several times faster than the 4-D ones of a batched `x @ kernel` (the 4DMoT `paper` train
    step: ~130 ms of transposes in encoder/conv_out's backward pass → none)."""
    return (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], kernel.shape[-1])


def window_conv(x: jnp.ndarray, kernel: jnp.ndarray, dilation: int) -> jnp.ndarray:
    """'Same' zero-padded convolution of `x [B, T, J, in]` with `kernel [kh, kw, in, out]`."""
    kh, kw, c_in, c_out = kernel.shape
    columns = c_in <= c_out
    if columns:
        x = _joint_columns(x, kw, dilation)
    frames, y = x.shape[1], 0
    for tap, offset in zip(_taps(kernel), _tap_offsets(kh, dilation)):
        lo, hi = max(0, -offset), frames - max(0, offset)  # output frames this tap reaches
        if lo >= hi:
            continue
        reached = x[:, lo + offset:hi + offset]
        z = (_rows_matmul(reached, tap.reshape(kw * c_in, c_out)) if columns
             else _joint_products(reached, tap, dilation))
        y = y + jnp.pad(z, ((0, 0), (lo, frames - hi), (0, 0), (0, 0)))
    return y


def lax_conv(x: jnp.ndarray, kernel: jnp.ndarray, dilation: int) -> jnp.ndarray:
    """The same convolution by `lax.conv_general_dilated`."""
    kh, kw = kernel.shape[:2]
    padding = [(dilation * (kh // 2),) * 2, (dilation * (kw // 2),) * 2]
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class WindowConv(nn.Module):
    """`nn.Conv` over `[batch, frames, joints, in]` with 'same' zero padding and equal dilation.

    Same parameters (`kernel [kh, kw, in, out]`, `bias [out]`, same initialisers) and result as
    `nn.Conv(features, kernel_size, padding=d * (k // 2), kernel_dilation=d)`, so checkpoints
    and converters are unchanged; `impl` picks the computation (`IMPLS`).
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    dilation: int = 1
    impl: str = "matmul"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.impl not in IMPLS:
            raise ValueError(f"conv impl {self.impl!r} is not one of {IMPLS}")
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        conv = window_conv if self.impl == "matmul" else lax_conv
        return conv(x, kernel, self.dilation) + bias
