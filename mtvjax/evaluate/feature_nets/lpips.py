"""LPIPS (Zhang et al. 2018, the `lpips` package, v0.1 weights) in Flax.

Inputs in [-1, 1] → scaling layer `(x - shift) / scale` → a torchvision backbone (`alex`:
AlexNet features, taps after ReLU 1, 4, 7, 9, 11; `vgg`: VGG16 features, taps after relu1_2,
2_2, 3_3, 4_3, 5_3) → per tap: unit-normalise over channels, squared difference, 1 × 1 conv
to one channel without bias (`lin{k}`), spatial mean → sum over taps.

`width_divisor` divides every channel count (1 = the public network); the tests use it to run the
exact block structure at a fraction of the width. Parameter paths follow the PyTorch modules.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mtvjax.evaluate.feature_nets.layers import ZEROS, max_pool, torch_padding

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
                                      padding=torch_padding(p), kernel_init=ZEROS,
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
