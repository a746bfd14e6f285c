"""Writing and reading the Orbax checkpoints the converters produce: step 0 holding
`{"params": ...}` plus a config JSON (`{family, variant, model: fields, conversion: report}`)."""
from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp

from mtvjax.checkpoint.manager import Checkpointer, abstract_like, read_config


def prepare_destination(dst) -> str:
    """`dst` as an absolute path; it must be absent or an empty folder."""
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"{dst}: destination exists and is not an empty folder")
    return dst


def jsonable(tree):
    """`tree` with numpy values as lists and other non-JSON values as strings."""
    return json.loads(json.dumps(tree, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def write_step0(dst: str, params, config_json: dict) -> None:
    """Writes `{"params": params}` and `config_json` as step 0 of an Orbax checkpoint."""
    checkpointer = Checkpointer(str(dst), keep=None)
    checkpointer.save(0, {"params": params}, None, config_json, force=True)
    checkpointer.wait()
    checkpointer.close()


def save_converted(dst, family: str, config, params, report) -> dict:
    """Writes `{"params": params}` as step 0 under `dst` (absent or empty) with the JSON
    `{family, variant, model: config fields, conversion: report}` the loaders read."""
    dst = prepare_destination(dst)
    config_json = {"family": family, "variant": report["variant"],
                   "model": config.to_fields(), "conversion": report}
    write_step0(dst, params, config_json)
    return {**report, "dst": dst, "step": 0, "model": config.to_fields()}


def restore_like(directory, abstract_params, step: int | None = None):
    """The params of step `step` (latest: None) of a converted checkpoint, restored into the
    shapes and dtypes of `abstract_params`."""
    checkpointer = Checkpointer(str(directory), keep=None, create=False)
    state = checkpointer.restore(step, {"params": abstract_like(abstract_params)})
    checkpointer.close()
    return state["params"]


def restore_params(directory, shapes, step: int | None = None, dtype=jnp.float32):
    """Params of a converted checkpoint, restored to the shapes of `shapes` in `dtype`."""
    return restore_like(directory, jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype)), shapes), step)


def load_converted(directory, family: str, make_config, shapes_fn, step: int | None = None):
    """(config, float32 params) of a checkpoint written by `save_converted` for `family`."""
    directory = str(directory)
    config_json, step = read_config(directory, step)
    if config_json.get("family") != family:
        raise ValueError(f"{directory}: not a {family} checkpoint "
                         f"(family {config_json.get('family')!r})")
    config = make_config(config_json["model"])
    return config, restore_params(directory, shapes_fn(config), step)


def checkpoint_id(directory, step: int | None = None) -> str:
    """A stable id of a converted checkpoint: sha256 of its family, model fields and weight
    fingerprint (not of its path), so copies of a checkpoint share cached embeddings."""
    config_json, _ = read_config(str(directory), step)
    identity = {"family": config_json.get("family"), "model": config_json.get("model"),
                "fingerprint": config_json.get("conversion", {}).get("fingerprint")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
