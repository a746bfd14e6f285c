"""Writing and reading the Orbax checkpoints the converters produce: step 0 holding
`{"params": ...}` plus a config JSON (`{family, variant, model: fields, conversion: report}`)."""
from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from mtvjax.checkpoint.manager import (Checkpointer, read_config, restore_entries,
                                      stored_arrays, stored_dtypes)

# Arrays are written in chunks of at most this many bytes, so that restoring one device's shard
# decodes only the chunks it overlaps (Orbax writes one chunk per array by default).
SAVE_CHUNK_BYTES = 64 * 2**20
# Shards being read at once (GB; at least the largest array): a leaf stored in another dtype than
# it is restored in exists in both only for these bytes, never for the whole model.
RESTORE_CONCURRENT_GB = 1
# The dtypes a converter may store parameters in (`mtvjax convert --dtype`).
SAVE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


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
    checkpointer.save(0, {"params": params}, None, config_json, force=True,
                      chunk_bytes=SAVE_CHUNK_BYTES)
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
    shapes, dtypes and shardings of `abstract_params` (ShapeDtypeStructs; one without a
    sharding goes to the default device). Every device reads only its own shard of each leaf,
    cast shard by shard when the stored dtype differs, `RESTORE_CONCURRENT_GB` at a time: the
    host holds no copy of the model besides what the devices hold."""
    directory = str(directory)
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default), abstract_params)
    largest = max([int(np.prod(m.shape)) * max(np.dtype(m.dtype).itemsize, x.dtype.itemsize)
                   for m, x in zip(jax.tree.leaves(stored_arrays(directory, step, "params")),
                                   jax.tree.leaves(abstract))] or [0])
    concurrent_gb = max(RESTORE_CONCURRENT_GB, 1.01 * largest / 1e9)
    return restore_entries(directory, step, {"params": abstract}, concurrent_gb)["params"]


def restore_params(directory, shapes, step: int | None = None, dtype=None, shardings=None):
    """Params of a converted checkpoint in the structure and shapes of `shapes`: floating leaves
    in `dtype` (None: each in the dtype it was stored in, read from the checkpoint's metadata,
    so a bfloat16 checkpoint restores as bfloat16 and a float32 one as float32), placed by
    `shardings` (a tree like `shapes` of `jax.sharding.Sharding`s, e.g.
    `mtvjax.parallel.sharding.param_shardings` on a mesh; None: the default device)."""
    stored = stored_dtypes(str(directory), step, "params")
    if shardings is None:
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: default, shapes)

    def leaf(shape, stored_dtype, sharding):
        target = stored_dtype
        if dtype is not None and jnp.issubdtype(stored_dtype, jnp.floating):
            target = jnp.dtype(dtype)
        return jax.ShapeDtypeStruct(shape.shape, target, sharding=sharding)
    return restore_like(directory, jax.tree.map(leaf, shapes, stored, shardings), step)


def load_converted(directory, family: str, make_config, shapes_fn, step: int | None = None):
    """(config, float32 params) of a checkpoint written by `save_converted` for `family`."""
    directory = str(directory)
    config_json, step = read_config(directory, step)
    if config_json.get("family") != family:
        raise ValueError(f"{directory}: not a {family} checkpoint "
                         f"(family {config_json.get('family')!r})")
    config = make_config(config_json["model"])
    return config, restore_params(directory, shapes_fn(config), step, jnp.float32)


def checkpoint_id(directory, step: int | None = None) -> str:
    """A stable id of a converted checkpoint: sha256 of its family, model fields and weight
    fingerprint (not of its path), so copies of a checkpoint share cached embeddings."""
    config_json, _ = read_config(str(directory), step)
    identity = {"family": config_json.get("family"), "model": config_json.get("model"),
                "fingerprint": config_json.get("conversion", {}).get("fingerprint")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
