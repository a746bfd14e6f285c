"""Loading `get_config()` files by path, as `config_flags` does on the command line, and checking
a training config before anything is built or compiled.

`load_config("configs/4dmot.py:tiny")` runs that file's `get_config("tiny")`; config files are
plain Python files under `configs/`, not importable modules. `check_train_config` refuses values
that cannot train (batch size 0, `checkpoint_every=0`, ...) with a `ConfigError` naming the key,
and settles `data.source` when a `data.path` is given with the embedded synthetic default.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

from mtvjax.errors import ConfigError

MOTION_SUFFIXES = (".pkl", ".npy", ".npz")
AT_LEAST_ONE = ("data.batch_size", "train.num_steps", "train.checkpoint_every", "train.log_every",
                "train.keep_checkpoints", "optim.grad_accum_steps")
AT_LEAST_ZERO = ("train.eval_batches", "train.stop_after_steps", "optim.warmup_steps")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`PATH[:ARG]` → `get_config(ARG)` (or `get_config()` without an argument)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: config file not found")
    module_spec = importlib.util.spec_from_file_location(
        "mtvjax_config_" + os.path.basename(path).replace(".", "_"), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def model_kind(config) -> str:
    """"mvdit" (configs/mvdit.py) or "4dmot" (configs/4dmot.py)."""
    if "model" in config and "family" in config.model:
        return "mvdit"
    if "quantizer" in config:
        return "4dmot"
    raise ConfigError("the config is neither a 4DMoT config (config.quantizer) nor an MV-DiT "
                      "config (config.model.family)")


def _get(config, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def _data_source_for(path: str, kind: str) -> str:
    """The `data.source` that reads `path`: a built dataset folder, or (4DMoT) motion files."""
    if not os.path.exists(path):
        raise ConfigError(f"config.data.path={path}: no such file or folder")
    if os.path.isfile(os.path.join(path, "manifest.json")) or (
            os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(path)), "manifest.json"))):
        return "shards"
    if kind == "4dmot" and (os.path.isdir(path) or path.endswith(MOTION_SUFFIXES)):
        return "files"
    raise ConfigError(f"config.data.path={path}: data.source is still the embedded 'synthetic'; "
                      f"set --config.data.source ({'shards' if kind == 'mvdit' else 'pkl|npy|shards'})")


def check_train_config(config) -> str:
    """Refuses values that cannot train, naming the key; returns `model_kind(config)`.

    A `data.path` given while `data.source` is the embedded default "synthetic" never trains on
    synthetic data silently: the source is inferred from the path (a built dataset → "shards",
    motion files → "files") or the config is refused.
    """
    kind = model_kind(config)
    check_train_values(config)
    data = config.data
    if data.source == "synthetic" and data.path:
        data.source = _data_source_for(data.path, kind)
    elif data.source != "synthetic" and data.path and not os.path.exists(data.path):
        raise ConfigError(f"config.data.path={data.path}: no such file or folder")
    return kind


def check_train_values(config) -> None:
    """Refuses counts that cannot train (`data.batch_size=0`, `train.checkpoint_every=0`, ...)."""
    for key in AT_LEAST_ONE + AT_LEAST_ZERO:
        value = _get(config, key)
        low = 1 if key in AT_LEAST_ONE else 0
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config.{key}={value!r}: expected an integer")
        if value < low:
            raise ConfigError(f"config.{key}={value}: must be at least {low}")
    frames = _get(config, "data.frame_counts")
    if frames is not None and (not frames or min(frames) < 1):
        raise ConfigError(f"config.data.frame_counts={tuple(frames)}: needs positive frame counts")


def flatten(tree, prefix: str = "") -> dict:
    """Nested dict / ConfigDict → {"a.b.c": value} (lists and tuples stay values)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
