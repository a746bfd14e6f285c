"""Checked construction of frozen dataclass configs (umT5, CLIP vision, Wan VAE, MV-DiT-17B)
from fields.

Configs travel as plain field dicts (presets, checkpoint JSON, ConfigDicts) tagged with their
`family`; `checked_fields` turns such a mapping back into constructor arguments, refusing fields
of another family or names the dataclass does not have.
"""
from __future__ import annotations

import dataclasses


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
