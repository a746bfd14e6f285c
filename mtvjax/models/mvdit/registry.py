"""MV-DiT family registry: `model.family` → the family's contract module.

big_vision style: `family("wan")` imports `mtvjax.models.mvdit.wan.family`; the module's names
(`build_model`, `init_variables`, `abstract_params`, `param_counts`, `motion_width`,
`trainable`, `check_motion_drop`, `predict`, `TRAINING_TARGET`, `HAS_TEXT`, `HAS_IMAGE`) are
listed in `mtvjax.models.mvdit.cogvideox.family`. Callers never branch on the family's name.
"""
from __future__ import annotations

import importlib
from types import ModuleType

FAMILIES = ("cogvideox", "wan")   # MV-DiT-7B, MV-DiT-17B
DEFAULT = "cogvideox"


def family(name: str) -> ModuleType:
    """The contract module of family `name`; ValueError for an unknown family."""
    if name not in FAMILIES:
        raise ValueError(f"unknown MV-DiT family {name!r}; expected one of {FAMILIES}")
    return importlib.import_module(f"mtvjax.models.mvdit.{name}.family")


def of(config) -> ModuleType:
    """The family of a project config (`config.model.family`, default cogvideox)."""
    return family(config.model.get("family", DEFAULT))
