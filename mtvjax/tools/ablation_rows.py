"""The rows of an ablation grid (`mtvjax.tools.ablate`): which rows to run, and the dotted-key
config overrides each row's training run gets (family preset, data paths, steps, the row's own)."""
from __future__ import annotations

import hashlib
import json
import os

import ml_collections

from mtvjax.config import flatten
from mtvjax.errors import UsageError

FAMILIES = ("tokenizer", "mvdit")


class UnknownConfigKey(UsageError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict) -> ml_collections.ConfigDict:
    """A copy of `config` with `overrides` ({"a.b": value}) set; unknown keys raise
    `UnknownConfigKey`, a value of the wrong type the ConfigDict's TypeError."""
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for depth, part in enumerate(parents):
            child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
            if not isinstance(child, ml_collections.ConfigDict):
                raise UnknownConfigKey(f"unknown config key {key!r} "
                                       f"(no section {'.'.join(parents[:depth + 1])!r})")
            node = child
        if leaf not in node:
            raise UnknownConfigKey(f"unknown config key {key!r}")
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


def row_overrides(config, row: dict, paths: dict) -> dict:
    """Every override a row's run gets: family preset, data, steps, then the row's own."""
    family = row["base"]
    out = flatten(config.presets[family]) if family in config.presets else {}
    out["train.num_steps"] = int(config.steps)
    if family == "tokenizer":
        motion = paths.get("motion", "")
        out.update({"data.source": "shards", "data.path": motion,
                    "data.val_path": os.path.join(motion, "val"),
                    "normalization.mean_path": os.path.join(motion, "mean.npy"),
                    "normalization.std_path": os.path.join(motion, "std.npy")})
    else:
        latents = paths.get("latents", "")
        out.update({"data.source": "shards", "data.path": latents, "data.val_path": latents})
    out.update(row.get("overrides") or {})
    return out


def fingerprint(base: str, overrides: dict) -> str:
    text = json.dumps({"base": base, "overrides": overrides}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def select_rows(rows, only: str) -> list[dict]:
    """The rows named (or indexed) in the comma-separated `only`; all rows when empty."""
    if not only:
        return list(rows)
    names = [r["name"] for r in rows]
    chosen = []
    for token in str(only).split(","):
        token = token.strip()
        if token.isdigit() and token not in names:
            if int(token) >= len(rows):
                raise ValueError(f"row index {token} out of range (0..{len(rows) - 1})")
            token = names[int(token)]
        if token not in names:
            raise ValueError(f"unknown row {token!r}; rows: {', '.join(names)}")
        chosen.append(rows[names.index(token)])
    return chosen


def check_rows(rows) -> None:
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be unique: {names}")
    for r in rows:
        if r["base"] not in FAMILIES:
            raise ValueError(f"row {r['name']}: base {r['base']!r} is not one of {FAMILIES}")
