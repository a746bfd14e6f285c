"""Loading `get_config()` files by path, as `config_flags` does on the command line.

`load_config("configs/4dmot.py:tiny")` runs that file's `get_config("tiny")`; config files are
plain Python files under `configs/`, not importable modules.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections


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
