"""Merging a Wan LoRA into released MV-DiT-17B weights the way the released `wan_lora.py` does
(docs/reference/mvdit17b.md §3.3): keys `diffusion_model.<p>.lora_down.weight` / `.lora_up.weight` →
`<p>.weight += up @ down · scale` (no alpha/rank factor; `.alpha` ignored), `<p>.diff_b` →
`<p>.bias += diff_b · scale`, `<p>.diff` → `<p>.weight += diff · scale`. Used by
`mtvjax.models.mvdit.wan.convert`, which adds the deltas to the source tensors in float32."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mtvjax.checkpoint.conversion import ConversionError, format_keys

LORA_PREFIX = "diffusion_model."


class LoraPlan(NamedTuple):
    deltas: dict          # target key -> list of ("lowrank", up, down) / ("full", key)
    source: object        # the opened LoRA tensor source
    scale: float
    ignored: list         # keys without the prefix, .alpha and unknown suffixes


def read_lora(source, scale: float = 1.0) -> LoraPlan:
    """The merge plan of an opened LoRA `source` (a `TensorSource` with `keys`, `get`, `path`),
    the way the released `wan_lora.py` reads it."""
    deltas, ignored, downs, ups = {}, [], {}, {}
    for key in source.keys():
        if not key.startswith(LORA_PREFIX):
            ignored.append(key)
            continue
        name = key[len(LORA_PREFIX):]
        if name.endswith(".lora_down.weight"):
            downs[name[:-len(".lora_down.weight")]] = key
        elif name.endswith(".lora_up.weight"):
            ups[name[:-len(".lora_up.weight")]] = key
        elif name.endswith(".diff_b"):
            deltas.setdefault(name[:-len(".diff_b")] + ".bias", []).append(("full", key))
        elif name.endswith(".diff"):
            deltas.setdefault(name[:-len(".diff")] + ".weight", []).append(("full", key))
        else:  # e.g. `.alpha`: the released merge ignores it
            ignored.append(key)
    unpaired = sorted(set(downs) ^ set(ups))
    if unpaired:
        raise ConversionError(source.path, "LoRA pairs incomplete (lora_down without lora_up or the "
                              "reverse): " + format_keys([LORA_PREFIX + p for p in unpaired]))
    for p in sorted(downs):
        deltas.setdefault(p + ".weight", []).append(("lowrank", ups[p], downs[p]))
    return LoraPlan(deltas, source, float(scale), sorted(ignored))


def lora_delta(plan: LoraPlan, key: str, shape: tuple) -> np.ndarray | None:
    """Sum of the LoRA deltas for released key `key` (float32), or None."""
    total = None
    for item in plan.deltas.get(key, ()):
        if item[0] == "lowrank":
            up, down = plan.source.get(item[1]), plan.source.get(item[2])
            if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
                raise ConversionError(plan.source.path, f"{item[1]} {up.shape} and {item[2]} "
                                      f"{down.shape} do not multiply")
            delta = (up @ down) * np.float32(plan.scale)
            names = f"{item[1]} @ {item[2]}"
        else:
            delta = plan.source.get(item[1]) * np.float32(plan.scale)
            names = item[1]
        if tuple(delta.shape) != tuple(shape):
            raise ConversionError(plan.source.path, f"{names} gives shape {delta.shape} for "
                                  f"{key} of shape {tuple(shape)}")
        total = delta if total is None else total + delta
    return total
