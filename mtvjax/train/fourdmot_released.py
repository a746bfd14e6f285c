"""A step-0 4DMoT training checkpoint from the released PyTorch weights.

`convert_4dmot` converts the file with `mtvjax.models.fourdmot.convert` and writes a full
`TrainState` (the converted parameters and quantizer, a fresh optimiser state) with its config
JSON at step 0, so the folder alone can be evaluated, tokenised with or fine-tuned from.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.checkpoint.manager import Checkpointer, config_to_json
from mtvjax.models.fourdmot.build import build_model
from mtvjax.models.fourdmot.convert import convert_state, plain
from mtvjax.models.fourdmot.tokenizer import TokenizerState
from mtvjax.train import fourdmot_step as steps


def train_state(config, tx, converted: TokenizerState) -> steps.TrainState:
    """The converted parameters, quantizer and statistics with a fresh optimiser state."""
    return steps.TrainState(
        step=converted.step, params=converted.params, opt_state=tx.init(converted.params),
        quantizer=converted.quantizer, stats=converted.stats,
        rng=jax.random.split(jax.random.PRNGKey(config.seed))[1],
        skipped_samples=jnp.array(0, jnp.int32))


def _check_like(state, abstract):
    """The built state has exactly the structure, shapes and dtypes `init_state` gives."""
    if jax.tree.structure(state) != jax.tree.structure(abstract):
        raise AssertionError("converted state differs in structure from init_state's")
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, a), b in zip(leaves, jax.tree.leaves(abstract)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"{jax.tree_util.keystr(path)}: {a.shape} {a.dtype}, "
                                 f"init_state gives {b.shape} {b.dtype}")


def convert_4dmot(src, dst, mean_path, std_path, variant="released") -> dict:
    """Converts the released tokenizer at `src` into an Orbax checkpoint (step 0) under `dst`.

    `variant` is a name in configs/4dmot.py, a ConfigDict, or None (the `released` config with
    the model sizes read from the file); see `mtvjax.models.fourdmot.convert.convert_state`.
    """
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"{dst}: destination exists and is not an empty folder")
    config, converted, tensors = convert_state(src, mean_path, std_path, variant)
    model, tx = build_model(config.model), steps.make_optimizer(config)
    abstract = steps.abstract_state(config, model, tx)
    state = train_state(config, tx, converted)
    _check_like(state, abstract)

    num_params = int(sum(np.prod(v.shape) for v in jax.tree.leaves(abstract.params)))
    checkpointer = Checkpointer(dst, keep=None)
    checkpointer.save(0, state, None, config_to_json(config), force=True)
    checkpointer.wait()
    checkpointer.close()
    return {"src": str(src), "dst": dst, "step": 0, "variant": config.variant,
            "tensors": tensors,
            "trainable_params": num_params,
            "codebook": tuple(converted.quantizer["codebook"].shape),
            "model": {k: plain(v) for k, v in config.model.items()},
            "mean_path": config.normalization.mean_path, "std_path": config.normalization.std_path}
