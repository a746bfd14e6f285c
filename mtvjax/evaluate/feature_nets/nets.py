"""Feature networks of the video metrics, in Flax: LPIPS here; InceptionV3 (FID) in
`feature_nets_inception`, I3D (FVD, FID-VID) in `feature_nets_i3d`.

Every network mirrors one public PyTorch implementation module for module, so its weights convert
name by name (`mtvjax.evaluate.feature_nets.convert`) and its outputs match to float32
round-off. All take channels-last inputs and run in inference mode (batch norm with its running
statistics, dropout off). Nothing is downloaded: weights come from a converted checkpoint folder
(`load_feature_net`), written by `mtvjax convert lpips|inception|i3d`.

LPIPS (Zhang et al. 2018, the `lpips` package, v0.1 weights):
  inputs in [-1, 1] → scaling layer `(x - shift) / scale` → a torchvision backbone (`alex`:
  AlexNet features, taps after ReLU 1, 4, 7, 9, 11; `vgg`: VGG16 features, taps after relu1_2,
  2_2, 3_3, 4_3, 5_3) → per tap: unit-normalise over channels, squared difference, 1 × 1 conv
  to one channel without bias (`lin{k}`), spatial mean → sum over taps.

`width_divisor` divides every channel count (1 = the public network); the tests use it to run the
exact block structure at a fraction of the width. Parameter paths follow the PyTorch modules;
batch norm is `FrozenBatchNorm` with `scale`, `bias`, `mean`, `var`, all in `params`.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("lpips", "inception", "i3d")
# Weights always come from a converted checkpoint: layers start from zeros, which is also the
# cheapest to trace when only the parameter shapes are wanted.
ZEROS = nn.initializers.zeros

# ---------------------------------------------------------------------------------------------
# Shared layers
# ---------------------------------------------------------------------------------------------


class FrozenBatchNorm(nn.Module):
    """Inference batch norm `(x - mean) / sqrt(var + eps) * scale + bias` over the last axis."""

    eps: float = 1e-3

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", ZEROS, (c,))
        mean = self.param("mean", ZEROS, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


@functools.lru_cache(maxsize=64)
def resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """`[out, in]` weights of 1-D bilinear resampling as PyTorch's
    `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing): source coordinate
    `(i + 0.5) · in/out - 0.5`, clamped at 0, the next sample clamped at the edge."""
    m = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m.astype(np.float32)


def resize_bilinear(x, size: Sequence[int]):
    """Resizes `[..., H, W, C]` to `size = (h, w)` like PyTorch's bilinear `F.interpolate`
    (align_corners=False, no antialias). Works on numpy and JAX arrays (returns the same kind)."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-3:-1] == (h, w):
        return x
    mh, mw = resize_matrix(h, x.shape[-3]), resize_matrix(w, x.shape[-2])
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.einsum("oh,...hwc->...owc", mh, x.astype(np.float32))
    return xp.einsum("pw,...owc->...opc", mw, x)


def avg_pool_exclude_pad(x, window: Sequence[int], padding: Sequence[int]):
    """Stride-1 average pooling over the spatial axes of `[N, *spatial, C]` with zero padding
    excluded from the count (PyTorch `count_include_pad=False`)."""
    dims = (1,) + tuple(window) + (1,)
    pads = ((0, 0),) + tuple((p, p) for p in padding) + ((0, 0),)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, (1,) * x.ndim, pads)
    ones = jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, (1,) * x.ndim, pads)
    return total / count


def max_pool(x, window: Sequence[int], strides: Sequence[int], padding=None, pad_value=-jnp.inf):
    """Max pooling over the spatial axes of `[N, *spatial, C]`, floor mode; `padding` a
    symmetric per-axis amount or per-axis (front, back) pairs, filled with `pad_value`."""
    if padding:
        pairs = [p if isinstance(p, (tuple, list)) else (p, p) for p in padding]
        x = jnp.pad(x, ((0, 0),) + tuple(tuple(p) for p in pairs) + ((0, 0),),
                    constant_values=pad_value)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1,) + tuple(window) + (1,),
                                 (1,) + tuple(strides) + (1,), "VALID")


def _torch_padding(p: int):
    return ((p, p), (p, p))


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------

# The lpips package's ScalingLayer constants (buffers `scaling_layer.shift` / `.scale`).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# Per backbone: taps (stages); each stage = (max-pool before it?, convs), a conv being
# (torchvision `features` index, out channels, kernel, stride, padding); every conv is followed
# by a ReLU and the tap is the last ReLU's output of the stage.
LPIPS_NETS = {
    "alex": dict(pool=(3, 2), stages=(
        (False, ((0, 64, 11, 4, 2),)),
        (True, ((3, 192, 5, 1, 2),)),
        (True, ((6, 384, 3, 1, 1),)),
        (False, ((8, 256, 3, 1, 1),)),
        (False, ((10, 256, 3, 1, 1),)))),
    "vgg": dict(pool=(2, 2), stages=(
        (False, ((0, 64, 3, 1, 1), (2, 64, 3, 1, 1))),
        (True, ((5, 128, 3, 1, 1), (7, 128, 3, 1, 1))),
        (True, ((10, 256, 3, 1, 1), (12, 256, 3, 1, 1), (14, 256, 3, 1, 1))),
        (True, ((17, 512, 3, 1, 1), (19, 512, 3, 1, 1), (21, 512, 3, 1, 1))),
        (True, ((24, 512, 3, 1, 1), (26, 512, 3, 1, 1), (28, 512, 3, 1, 1))))),
}


def lpips_convs(net: str):
    """(features index, out channels, kernel, stride, padding) of the backbone's convs."""
    return [conv for _, convs in LPIPS_NETS[net]["stages"] for conv in convs]


def lpips_tap_channels(net: str, width_divisor: int = 1) -> list[int]:
    return [convs[-1][1] // width_divisor for _, convs in LPIPS_NETS[net]["stages"]]


def _normalize_channels(x, eps: float = 1e-10):
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS distance between image batches `[N, H, W, 3]` in [-1, 1] → `[N]`.

    Parameters: `features_{i}/{kernel,bias}` (torchvision `features.{i}`) and `lin{k}/kernel`
    `[C_k, 1]` (lpips `lin{k}.model.1.weight`).
    """

    net: str = "alex"
    width_divisor: int = 1

    def setup(self):
        spec = LPIPS_NETS[self.net]
        self.convs = {str(i): nn.Conv(out // self.width_divisor, (k, k), strides=(s, s),
                                      padding=_torch_padding(p), kernel_init=ZEROS,
                                      name=f"features_{i}")
                      for i, out, k, s, p in lpips_convs(self.net)}
        self.lins = [nn.Dense(1, use_bias=False, kernel_init=ZEROS, name=f"lin{k}")
                     for k in range(len(spec["stages"]))]

    def features(self, x) -> list:
        """The backbone's tap activations (after the scaling layer) of `[N, H, W, 3]` in [-1, 1]."""
        spec = LPIPS_NETS[self.net]
        x = (x - jnp.asarray(LPIPS_SHIFT, x.dtype)) / jnp.asarray(LPIPS_SCALE, x.dtype)
        taps = []
        for pool_first, convs in spec["stages"]:
            if pool_first:
                k, s = spec["pool"]
                x = max_pool(x, (k, k), (s, s))
            for i, *_ in convs:
                x = nn.relu(self.convs[str(i)](x))
            taps.append(x)
        return taps

    def __call__(self, x0, x1):
        total = 0.0
        for lin, f0, f1 in zip(self.lins, self.features(x0), self.features(x1)):
            d = (_normalize_channels(f0) - _normalize_channels(f1)) ** 2
            total = total + jnp.mean(lin(d)[..., 0], axis=(1, 2))
        return total


# ---------------------------------------------------------------------------------------------
# Building and loading any feature net
# ---------------------------------------------------------------------------------------------


def build(net_config: dict) -> nn.Module:
    """The module of a converted checkpoint's config (`{"kind": ..., net fields}`)."""
    kind = net_config["kind"]
    if kind == "lpips":
        return LPIPS(net=net_config.get("net", "alex"),
                     width_divisor=int(net_config.get("width_divisor", 1)))
    if kind == "inception":
        from mtvjax.evaluate.feature_nets.inception import InceptionV3
        return InceptionV3(width_divisor=int(net_config.get("width_divisor", 1)),
                           num_classes=int(net_config.get("num_classes", 1008)))
    if kind == "i3d":
        from mtvjax.evaluate.feature_nets.i3d import InceptionI3d
        return InceptionI3d(width_divisor=int(net_config.get("width_divisor", 1)),
                            num_classes=int(net_config.get("num_classes", 400)))
    raise ValueError(f"unknown feature net kind {kind!r} (expected one of {KINDS})")


def example_input(kind: str):
    """Arguments of `module.init` / `apply` for shape inference (the nets resize internally)."""
    if kind == "lpips":
        x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        return (x, x)
    if kind == "inception":
        return (jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32),)
    return (jax.ShapeDtypeStruct((1, 16, 32, 32, 3), jnp.float32),)


def abstract_params(module: nn.Module, kind: str):
    """ShapeDtypeStructs of the module's params (nothing is computed)."""
    kwargs = {} if kind == "lpips" else {"resolution": None}
    init = functools.partial(module.init, **kwargs) if kwargs else module.init
    return jax.eval_shape(init, jax.random.PRNGKey(0), *example_input(kind))["params"]


def save_feature_net(dst, net_config: dict, params) -> None:
    """Writes `{"params": params}` and the net's config as an Orbax checkpoint (step 0)."""
    from mtvjax.checkpoint.manager import Checkpointer
    checkpointer = Checkpointer(os.path.abspath(dst), keep=None)
    checkpointer.save(0, {"params": params}, None, dict(net_config), force=True)
    checkpointer.wait()
    checkpointer.close()


def load_feature_net(path, kind: str):
    """(module, params, net config) of the converted `kind` net in checkpoint folder `path`.

    Raises FileNotFoundError naming the path (and the convert command) when it is missing, and
    ValueError when it holds another kind of net.
    """
    from mtvjax.checkpoint.manager import Checkpointer, abstract_like, read_config
    hint = f"convert the public weights with `mtvjax convert {kind} --src FILE --dst {path}`"
    if not path:
        raise FileNotFoundError(f"no {kind} weights configured: set --config.weights.{kind}=DIR "
                                f"({hint})")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: {kind} weights not found ({hint})")
    try:
        net_config, step = read_config(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} ({hint})") from e
    if net_config.get("kind") != kind:
        raise ValueError(f"{path}: holds a {net_config.get('kind')!r} net, expected {kind!r}")
    module = build(net_config)
    checkpointer = Checkpointer(os.path.abspath(path), keep=None, create=False)
    params = checkpointer.restore(step, {"params": abstract_like(abstract_params(module, kind))})
    checkpointer.close()
    return module, params["params"], net_config
