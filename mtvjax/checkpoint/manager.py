"""Orbax checkpoints of a training run: train state, data-iterator state and the run's config.

Each step folder holds three items: `state` (a pytree of arrays), `data` (the Grain iterator
state, so a resumed run sees exactly the batches an uninterrupted one would) and `config`
(JSON, so a checkpoint alone can rebuild its model). Orbax writes into a temporary folder and
renames it when complete, so a run killed at any moment leaves only complete steps behind.
A step damaged afterwards (truncated files) is skipped by `Checkpointer.restore_latest`, which
falls back to the newest intact step and moves the broken one aside to `corrupt_step_<N>`.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import time

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


class _AbandonedReads(logging.Filter):
    """Drops asyncio's report of the other reads of a failed restore (pages of TensorStore)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


@contextlib.contextmanager
def _quiet_abandoned_reads():
    """Silences the reads a failed restore leaves behind (logged or raised when collected)."""
    quiet, hook = _AbandonedReads(), sys.unraisablehook
    logging.getLogger("asyncio").addFilter(quiet)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()              # the abandoned reads report when collected: do it here
        sys.unraisablehook = hook
        logging.getLogger("asyncio").removeFilter(quiet)


class CheckpointError(ValueError):
    """No readable checkpoint where one is needed (the commands print it as one line)."""


def _cause(error: Exception) -> str:
    """A one-line summary of why reading a step failed (TensorStore errors span pages)."""
    text = str(error).strip().splitlines()
    text = text[0] if text else ""
    return f"{type(error).__name__}: {text[:160]}"


def _manager(directory, keep: int | None, create: bool,
             state_handler: ocp.CheckpointHandler | None = None) -> ocp.CheckpointManager:
    directory = str(directory)
    return ocp.CheckpointManager(
        directory if "://" in directory else os.path.abspath(directory),   # gs://... as is
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
        item_handlers={"state": state_handler or ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})


class Checkpointer:
    """Saves and restores (state, data iterator, config) under `directory`, keeping the last K."""

    def __init__(self, directory: str, keep: int | None = 3, create: bool = True):
        self.directory = directory
        self._manager = _manager(directory, keep, create)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_iterator, config: dict, force: bool = False,
             chunk_bytes: int | None = None) -> bool:
        """`chunk_bytes`: store each array in chunks of at most that size (Orbax default: one
        chunk per array), so a sharded restore decodes only the chunks of each device's shard."""
        save_args = (None if chunk_bytes is None else
                     jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=chunk_bytes), state))
        args = {"state": ocp.args.StandardSave(state, save_args=save_args),
                "config": ocp.args.JsonSave(config)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, abstract_state, data_iterator=None):
        """Restores `state` into the structure/shardings of `abstract_state` (and the iterator)."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**args))["state"]

    def restore_latest(self, abstract_state, data_iterator=None) -> tuple:
        """(state, step) of the newest step that restores, like `restore`.

        A newer step that fails to read while an older one restores is broken (truncated or
        emptied files): it is named in a warning and moved to `corrupt_step_<N>` in the same
        folder (kept for inspection, out of the way of the next save of step N). When no step
        restores nothing is moved and `CheckpointError` names each step's failure.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                with _quiet_abandoned_reads():
                    state = self.restore(step, abstract_state, data_iterator)
            except Exception as e:  # noqa: BLE001 - TensorStore raises bare Exception
                failures.append((step, _cause(e)))
                continue
            for broken, cause in failures:
                self._set_aside(broken, cause, step)
            return state, step
        details = "; ".join(f"step {s}: {cause}" for s, cause in failures)
        raise CheckpointError(f"{self.directory}: no checkpoint step restores ({details})")

    def _set_aside(self, step: int, cause: str, fallback: int):
        target = f"corrupt_step_{step}_{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"warning: checkpoint step {step} in {self.directory} is unreadable ({cause}); "
              f"resuming from step {fallback}; the broken step is kept as {target}",
              file=sys.stderr, flush=True)
        if jax.process_index() == 0:
            root = epath.Path(self._manager.directory)
            (root / str(step)).rename(root / target)
        ocp.multihost.sync_global_processes(f"mtvjax_set_aside_{step}")
        self._manager.reload()

    def newest_config(self) -> tuple[dict, int] | None:
        """The config stored with the newest step whose config reads, and that step."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return _restore_config(self._manager, step), step
            except CheckpointError:
                continue
        return None

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


def read_config(directory: str, step: int | None = None) -> tuple[dict, int]:
    """The config JSON stored with a checkpoint (latest step unless given), and its step."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: checkpoint folder not found")
    manager = _manager(directory, None, create=False)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{directory}: no complete checkpoint in this folder")
    try:
        return _restore_config(manager, step), step
    finally:
        manager.close()


def _restore_config(manager: ocp.CheckpointManager, step: int) -> dict:
    try:
        return manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]
    except Exception as e:  # noqa: BLE001 - missing or truncated files, whatever Orbax raises
        raise CheckpointError(f"{manager.directory}: the config of step {step} is unreadable "
                              f"({_cause(e)})") from e


def restore_entries(directory: str, step: int | None, abstract: dict,
                    concurrent_gb: int | None = None) -> dict:
    """Only the top-level entries of a saved `state` that `abstract` names (e.g. the parameters
    without the optimiser state), restored into its structure/dtypes/shardings (latest step:
    None). `concurrent_gb` bounds the bytes of shards being read at once (Orbax's default: 96)."""
    manager = _manager(directory, None, create=False, state_handler=ocp.PyTreeCheckpointHandler(
        restore_concurrent_gb=concurrent_gb))
    restore = ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True)
    restored = manager.restore(step, args=ocp.args.Composite(state=restore))["state"]
    manager.close()
    return restored


def stored_arrays(directory: str, step: int | None, entry: str) -> dict:
    """Orbax's metadata (`shape`, `dtype`, `storage.chunk_shape`) of every array of top-level
    entry `entry` of a saved `state`; no array is read. Latest step: None."""
    manager = _manager(directory, None, create=False)
    try:
        step = manager.latest_step() if step is None else step
        return manager.item_metadata(step)["state"][entry]
    finally:
        manager.close()


def stored_dtypes(directory: str, step: int | None, entry: str) -> dict:
    """The dtype of every array of top-level entry `entry` of a saved `state` (`stored_arrays`)."""
    return jax.tree.map(lambda m: m.dtype, stored_arrays(directory, step, entry))


def abstract_like(tree, sharding=None):
    """ShapeDtypeStructs of `tree` (optionally all with one sharding), for restoring into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def config_to_json(config) -> dict:
    """An ml_collections config as plain JSON data (tuples become lists)."""
    return json.loads(config.to_json())
