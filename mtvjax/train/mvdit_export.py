"""An `mtvjax train` MV-DiT run → a converted checkpoint that `mtvjax animate` loads.

`export_run(checkpoints, dst, step=None)`:

* reads the config stored with checkpoint `step` (latest: None) of the run's checkpoint folder
  (`WORKDIR/checkpoints`) and restores only its `params`, on the host (no optimiser state, no
  accelerator memory);
* a run with `optim.trainable="lora"` has its adapters merged: W + (alpha/rank)·A@B for each
  target (`mtvjax.train.lora`), with the run's alpha and rank;
* writes step 0 under `dst` in the family's converted format (`write_checkpoint` of its registry
  contract: exactly what `mtvjax convert mvdit7b|mvdit17b` writes), the model fields as the run
  trained them, with `conversion` = {exported_from, step, lora}.

The destination must be absent, an empty folder, or an earlier export (its config names
`conversion.exported_from` and it holds nothing but checkpoint step folders). The new export is
written beside it as `.NAME.tmp-PID` and renamed into place; an earlier export is removed only
once the new one is complete. Anything else is refused and nothing is deleted.
"""
from __future__ import annotations

import os
import shutil

import jax
import ml_collections
from flax import traverse_util

from mtvjax.checkpoint.manager import CheckpointError, read_config, restore_entries
from mtvjax.config import model_kind
from mtvjax.errors import UserError
from mtvjax.models.mvdit import registry
from mtvjax.train import lora

EXPORTED_FROM = "exported_from"


class ExportError(UserError, FileExistsError):
    """A destination an export may not write into."""


def is_export(folder: str) -> bool:
    """Whether `folder` holds an earlier export and nothing else."""
    entries = os.listdir(folder)
    if not entries or not all(e.isdigit() and os.path.isdir(os.path.join(folder, e))
                              and not os.path.islink(os.path.join(folder, e)) for e in entries):
        return False
    try:
        config_json, _ = read_config(folder)
    except (CheckpointError, OSError):
        return False
    return EXPORTED_FROM in (config_json.get("conversion") or {})


def check_destination(dst: str) -> None:
    """Raises `ExportError` unless `dst` is absent, an empty folder or an earlier export."""
    if os.path.islink(dst):
        raise ExportError(f"{dst}: is a symbolic link; give the folder itself")
    if not os.path.exists(dst):
        return
    if not os.path.isdir(dst):
        raise ExportError(f"{dst}: is a file, not a folder; choose another --dst")
    if os.listdir(dst) and not is_export(dst):
        raise ExportError(f"{dst}: exists and is not an earlier export (holds "
                          f"{', '.join(sorted(os.listdir(dst))[:5])}); not replacing it: choose "
                          "another --dst or remove it yourself")


def restore_run(checkpoints: str, step: int | None = None):
    """(project config, host params as trained: adapters under `lora` for a LoRA run, step)."""
    config_json, step = read_config(checkpoints, step)
    config = ml_collections.ConfigDict(config_json)
    if model_kind(config) != "mvdit":
        raise UserError(f"{checkpoints}: a 4DMoT run; export takes MV-DiT runs")
    fam = registry.of(config)
    abstract = fam.abstract_params(config)
    if config.optim.get("trainable") == "lora":
        abstract = {**abstract, lora.KEY: lora.abstract_adapters(
            abstract, fam.logical_axes(config), config.optim.lora)}
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=host),
                            abstract)
    return config, restore_entries(checkpoints, step, {"params": abstract})["params"], step


def export_run(checkpoints: str, dst: str, step: int | None = None) -> dict:
    """Writes the run's (merged) parameters as a converted checkpoint; returns a summary."""
    dst = os.path.abspath(dst)
    check_destination(dst)
    config, params, step = restore_run(checkpoints, step)
    adapters = None
    if lora.KEY in params:
        o = config.optim.lora
        adapters = {"rank": o.rank, "alpha": o.alpha, "targets": list(o.targets),
                    "kernels": len(traverse_util.flatten_dict(params[lora.KEY])) // 2}
        params = lora.effective_params(params, lora.scale(o))
    report = {EXPORTED_FROM: os.path.abspath(checkpoints), "step": step, "lora": adapters}
    parent, name = os.path.split(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    try:
        registry.of(config).write_checkpoint(tmp, params, config, report)
        check_destination(dst)                # again: it may have changed meanwhile
        if os.path.exists(dst):
            old = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dst)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)                 # this process's own unfinished export
    return {"dst": dst, "family": registry.of(config).NAME, "step": step, "lora": adapters}
