"""The conversion flow shared by the condition encoders' converters (`convert_umt5`,
`convert_clip_vision`): open the source, let the family plan the layout, check it, fill the
float32 params and report.

Sources are read through `conversion.TensorSource` (a `.safetensors` file, a sharded folder with its
index, or a torch file read with `torch.load(weights_only=True)`), and a prefix on every key
(`model.`, which MTVCrafter's loader adds; `text_encoder.`, `image_encoder.`, `module.`) is
dropped. Every source tensor the plan keeps and every parameter is used exactly once with
matching shapes, or one `conversion.ConversionError` names the keys (unused, missing, shape
mismatches). The report has a `fingerprint` of the converted weights; `checkpoint_id(dst)` (the
text cache's key) is derived from it. `variant`: a preset name, a fields dict, a config, or None
to read the sizes from the shapes (and a transformers `config.json` beside the weights).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.conversion import (AS_IS, LINEAR, ConversionError, Rule, TensorSource,
                                          check_layout, fill_targets, format_keys, strip_prefix)
from mtvjax.models.layers.param_tree import count_params

RULES = {
    "as_is": AS_IS,
    "linear": LINEAR,
    # Conv2d [out, in, h, w] -> [h, w, in, out]
    "conv2d": Rule(lambda a, t: a.transpose(2, 3, 1, 0), lambda t: [(t[3], t[2], t[0], t[1])]),
    # Wan's cls_embedding [1, 1, D] / pos_embedding [1, N, D] -> [D] / [N, D]
    "squeeze": Rule(lambda a, t: a.reshape(t), lambda t: [(1,) * (3 - len(t)) + tuple(t)]),
}
PREFIXES = ("model.", "text_encoder.", "image_encoder.", "module.")
SPLIT = "[{}]"          # virtual key of one third of a fused q|k|v tensor: KEY[q], KEY[k], KEY[v]
FINGERPRINT_SAMPLES = 65536


class Plan(NamedTuple):
    """What a family's planner decided about one source."""

    source: TensorSource      # the view the table reads (skipped keys removed)
    naming: str               # the source layout's name
    config: Any               # the model config
    variant: str              # the variant's name in the report ("inferred", "custom", a preset)
    table: list               # `conversion.Entry` rows
    skipped: list             # source keys left out on purpose


def without(source: TensorSource, skip) -> tuple[TensorSource, list[str]]:
    """(view without the keys `skip(key)` is true for, the skipped keys)."""
    skipped = sorted(k for k in source.keys() if skip(k))
    dropped = set(skipped)
    keep = [k for k in source.keys() if k not in dropped]
    return (source.view({k: source.shapes[k] for k in keep},
                        {k: (lambda k=k: source.get(k)) for k in keep}), skipped)


def split_fused(source: TensorSource, fused) -> TensorSource:
    """Fused q|k|v tensors (`fused(key)` true; rows [3·D, ...]) appear as `KEY[q]`, `KEY[k]`,
    `KEY[v]` of D rows each (q first, as `view(b, s, 3, n, d)` and open_clip split them)."""
    shapes, getters = {}, {}
    for key, shape in source.shapes.items():
        if not fused(key):
            shapes[key], getters[key] = shape, (lambda k=key: source.get(k))
            continue
        if not shape or shape[0] % 3:
            raise ConversionError(source.path, f"{key}: fused q/k/v tensor of shape {shape}, "
                                  "whose first axis is not a multiple of 3")
        rows = shape[0] // 3
        for i, part in enumerate("qkv"):
            name = key + SPLIT.format(part)
            shapes[name] = (rows,) + tuple(shape[1:])
            getters[name] = (lambda k=key, i=i, r=rows: source.get(k)[i * r:(i + 1) * r])
    return source.view(shapes, getters)


def layer_indices(keys, pattern: str) -> list[int]:
    """Sorted distinct block numbers (group 1 of `pattern`) among `keys`."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def fingerprint(params: dict) -> str:
    """sha256 over every parameter's path, shape and (a strided sample of) its float32 values."""
    digest = hashlib.sha256()
    for path, value in sorted(traverse_util.flatten_dict(params).items()):
        arr = np.ascontiguousarray(np.asarray(value, np.float32)).ravel()
        step = max(1, arr.size // FINGERPRINT_SAMPLES)
        digest.update(f"{'/'.join(path)}:{list(np.shape(value))}\n".encode())
        digest.update(np.ascontiguousarray(arr[::step]).tobytes())
    return digest.hexdigest()


def resolve_config(path, variant, make_config: Callable, preset: dict, infer: Callable):
    """(config, variant name): `variant` None → `make_config(preset + infer())` ("inferred");
    otherwise `make_config(variant)`, a bad variant raised as a `ConversionError`."""
    if variant is None:
        return make_config({**preset, **infer()}), "inferred"
    try:
        config = make_config(variant)
    except ValueError as e:
        raise ConversionError(path, str(e)) from e
    return config, variant if isinstance(variant, str) else "custom"


def convert_weights(src, param_shapes: Callable, what: str,
                    plan: Callable[[TensorSource, Path], Plan],
                    prepare: Callable[[TensorSource], TensorSource] = lambda s: s
                    ) -> tuple[Any, dict, dict]:
    """In memory: (config, float32 params, report) of the weights at `src`, a file or folder.
    `prepare` renames the prefix-stripped source; `plan(source, path)` reads its layout and
    config; `param_shapes(config)` gives the targets (params under `layers` are stacked);
    `what` names the model in errors."""
    path = Path(src)
    with prepare(strip_prefix(TensorSource.open(path), PREFIXES)) as source:
        p = plan(source, path)
        targets = {k: tuple(s.shape)
                   for k, s in traverse_util.flatten_dict(param_shapes(p.config)).items()}
        check_layout(p.source.shapes, targets, p.table, RULES, path,
                     what=f"{what} ({p.naming} naming)", stacked=lambda t: t[0] == "layers")
        params = traverse_util.unflatten_dict(fill_targets(p.source.get, targets, p.table, RULES))
        report = {"src": str(src), "naming": p.naming, "variant": p.variant,
                  "tensors": len(p.source.shapes), "skipped": len(p.skipped),
                  "skipped_keys": format_keys(p.skipped, 8) if p.skipped else "",
                  "params": count_params(params), "fingerprint": fingerprint(params)}
    return p.config, params, report
