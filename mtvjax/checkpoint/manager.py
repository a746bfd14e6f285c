"""Orbax checkpoints of a training run: train state, data-iterator state and the run's config.

Each step folder holds three items: `state` (a pytree of arrays), `data` (the Grain iterator
state, so a resumed run sees exactly the batches an uninterrupted one would) and `config`
(JSON, so a checkpoint alone can rebuild its model). Orbax writes into a temporary folder and
renames it when complete, so a run killed at any moment leaves only complete steps behind.
"""
from __future__ import annotations

import json
import os

import grain
import jax
import orbax.checkpoint as ocp


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

    def save(self, step: int, state, data_iterator, config: dict, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, abstract_state, data_iterator=None):
        """Restores `state` into the structure/shardings of `abstract_state` (and the iterator)."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**args))["state"]

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
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    manager.close()
    return config, step


def restore_entries(directory: str, step: int, abstract: dict) -> dict:
    """Only the top-level entries of a saved `state` that `abstract` names (e.g. the parameters
    without the optimiser state), restored into its structure/shardings."""
    manager = _manager(directory, None, create=False, state_handler=ocp.PyTreeCheckpointHandler())
    restore = ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True)
    restored = manager.restore(step, args=ocp.args.Composite(state=restore))["state"]
    manager.close()
    return restored


def abstract_like(tree, sharding=None):
    """ShapeDtypeStructs of `tree` (optionally all with one sharding), for restoring into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def config_to_json(config) -> dict:
    """An ml_collections config as plain JSON data (tuples become lists)."""
    return json.loads(config.to_json())
