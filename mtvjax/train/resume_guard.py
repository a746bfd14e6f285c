"""Resuming only with the config that made the checkpoints, unless a change is accepted.

On resume the new command's config is compared with the one stored with the newest checkpoint.
Keys that only steer the run's bookkeeping (`HARMLESS`: logging, checkpoint and eval cadence,
the step budget, loader threads, device layout) may change freely; any other change (model,
optimiser, schedule, data stream, seed, quantizer, ...) is refused with one message listing
every differing key, unless `train.allow_config_change`. Keys the stored config does not have at
all (added to the configs by a newer mtvjax, e.g. a new section with its defaults) are accepted
and recorded, not refused: the run that made the checkpoint had no such setting to differ
from. Every accepted change is appended to
`config_changes.jsonl` in the workdir with the step, time, the differences and the previous
config in full, so the history survives the checkpoints being rotated.
"""
from __future__ import annotations

import json
import time

import jax
from etils import epath

from mtvjax.checkpoint.manager import Checkpointer, config_to_json
from mtvjax.config import flatten

# Command switches, not part of a run's definition: never compared.
IGNORED = ("resume", "train.allow_config_change")
# Keys (and key prefixes) whose change leaves the model, optimiser and data stream alone.
HARMLESS = ("train.num_steps", "train.log_every", "train.checkpoint_every",
            "train.keep_checkpoints", "train.stop_after_steps", "train.eval_batches",
            "train.peak_flops_per_device", "data.val_path", "data.num_threads", "data.prefetch",
            "mesh", "sharding_rules", "remat")
ABSENT = "<absent>"
CHANGES_FILE = "config_changes.jsonl"


class ConfigChangeError(ValueError):
    """The resumed run's config changes guarded keys (the train command prints one line)."""


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """{key: (old, new)} for every compared key whose value differs (ABSENT: key missing)."""
    old, new = flatten(old), flatten(new)
    keys = sorted(k for k in old.keys() | new.keys() if not _matches(k, IGNORED))
    return {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in keys
            if old.get(k, ABSENT) != new.get(k, ABSENT)}


def guarded_keys(diff: dict) -> list[str]:
    """Differing keys that are neither harmless nor new since the checkpoint."""
    return [k for k, (old, _) in diff.items() if not _matches(k, HARMLESS) and old != ABSENT]


def check_resume(config, checkpointer: Checkpointer, workdir: str) -> None:
    """Refuses (ConfigChangeError) or records a config change against the newest checkpoint."""
    stored = checkpointer.newest_config()
    if stored is None:
        return
    saved, step = stored
    diff = config_diff(saved, config_to_json(config))
    if not diff:
        return
    guarded = guarded_keys(diff)
    listing = "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in diff.items()
                        if k in guarded)
    if guarded and not config.train.allow_config_change:
        raise ConfigChangeError(
            f"{workdir}: the checkpoint at step {step} was made with another config ({listing}); "
            "rerun with --config.train.allow_config_change=True to accept the change, or use a "
            "new workdir")
    if guarded:
        print(f"config changed on resume at step {step} (accepted): {listing}", flush=True)
    if jax.process_index() == 0:
        record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "changes": {k: {"old": old, "new": new} for k, (old, new) in diff.items()},
                  "guarded": guarded, "previous_config": saved}
        path = epath.Path(workdir) / CHANGES_FILE    # gs:// too, where appending is not possible
        history = path.read_text() if path.exists() else ""
        path.write_text(history + json.dumps(record) + "\n")
