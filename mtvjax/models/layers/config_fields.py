"""Checked construction of frozen dataclass configs (umT5, CLIP vision, Wan VAE, MV-DiT-17B)
from fields.

Configs travel as plain field dicts (presets, checkpoint JSON, ConfigDicts) tagged with their
`family`; `checked_fields` turns such a mapping back into constructor arguments, refusing fields
of another family or names the dataclass does not have. `config_from_variant` is the common
"preset name, fields mapping or config, plus overrides" entry point of every config class (each
class has `to_fields` and `from_fields`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping


def checked_fields(cls, fields, family: str, label: str) -> dict:
    """`fields` (a mapping or ConfigDict, optionally with `family`) as `cls(**...)` arguments."""
    fields = dict(fields.to_dict() if hasattr(fields, "to_dict") else fields)
    found = fields.pop("family", family)
    if found != family:
        raise ValueError(f"fields are for the {found!r} family, not {family!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {label} fields {unknown}; known: {sorted(known)}")
    return fields


def checked_config(cls, fields, family: str, label: str):
    """`fields` itself when it is already a `cls`, else `cls(**checked_fields(...))`."""
    if isinstance(fields, cls):
        return fields
    return cls(**checked_fields(cls, fields, family, label))


def config_from_variant(cls, variant, presets: Callable[[], Mapping], label: str, overrides):
    """A `cls` config from a preset name (a key of `presets()`), a fields mapping or a `cls`
    instance, with the field `overrides` applied on top."""
    if isinstance(variant, str):
        named = presets()
        if variant not in named:
            raise ValueError(f"unknown {label} variant {variant!r}; presets: {sorted(named)}")
        fields = named[variant]
    elif isinstance(variant, cls):
        fields = variant.to_fields()
    else:
        fields = dict(variant)
    return cls.from_fields({**fields, **overrides})
