"""Parameter counts of MV-DiT presets, from `jax.eval_shape` (nothing is allocated).

    python -m mtvjax.bench.param_count [tiny 7b ...] [--by-module]

Prints, per variant of configs/mvdit.py, the number of parameters and of tensors in the
released per-layer layout (a stacked `blocks` leaf counts once per layer), optionally broken down
by top-level module and by block submodule (per layer).
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from flax import traverse_util

from mtvjax.bench.common import REPO
from mtvjax.config import load_config
from mtvjax.models.mvdit import registry

CONFIG = REPO / "configs" / "mvdit.py"


def count(variant: str) -> dict:
    config = load_config(f"{CONFIG}:{variant}")
    fam = registry.of(config)
    params = fam.abstract_params(config)
    counts = fam.param_counts(config)
    total, tensors, trainable = counts["total"], counts["tensors_released"], counts["trainable"]
    modules = defaultdict(int)
    for path, leaf in traverse_util.flatten_dict(params).items():
        size = int(np.prod(leaf.shape))
        if path[0] == "blocks":
            modules[f"blocks/{path[1]}/{path[2]} (all layers)"] += size
        else:
            modules[path[0]] += size
    return {"variant": variant, "params": total, "tensors": tensors, "trainable": trainable,
            "layers": config.model.num_layers, "modules": dict(modules)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["tiny", "7b", "tiny17b", "17b"])
    parser.add_argument("--by-module", action="store_true")
    args = parser.parse_args(argv)
    for variant in args.variants:
        c = count(variant)
        trainable = "" if c["trainable"] is None else f", {c['trainable']:,} trainable (released)"
        print(f"{variant:>7}: {c['params']:>16,} parameters, {c['tensors']:>5} tensors, "
              f"{c['layers']} layers{trainable}")
        if args.by_module:
            for name, size in sorted(c["modules"].items()):
                print(f"        {name:<40} {size:>16,}")


if __name__ == "__main__":
    main()
