"""The video metrics' feature networks by kind ("lpips", "inception", "i3d"): build one from
its checkpoint config, its abstract parameters, and saving / loading a converted checkpoint.

Every network mirrors one public PyTorch implementation module for module, so its weights convert
name by name (`mtvjax.evaluate.feature_nets.convert`) and its outputs match to float32
round-off. All take channels-last inputs and run in inference mode (batch norm with its running
statistics, dropout off). Nothing is downloaded: weights come from a converted checkpoint folder
(`load_feature_net`), written by `mtvjax convert lpips|inception|i3d`.
"""
from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtvjax.evaluate.feature_nets.i3d import InceptionI3d
from mtvjax.evaluate.feature_nets.inception import InceptionV3
from mtvjax.evaluate.feature_nets.lpips import LPIPS

KINDS = ("lpips", "inception", "i3d")


def build(net_config: dict) -> nn.Module:
    """The module of a converted checkpoint's config (`{"kind": ..., net fields}`)."""
    kind = net_config["kind"]
    if kind == "lpips":
        return LPIPS(net=net_config.get("net", "alex"),
                     width_divisor=int(net_config.get("width_divisor", 1)))
    if kind == "inception":
        return InceptionV3(width_divisor=int(net_config.get("width_divisor", 1)),
                           num_classes=int(net_config.get("num_classes", 1008)))
    if kind == "i3d":
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
