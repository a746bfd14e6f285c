"""Loading converted encoder checkpoints (written by `mtvjax.models.encoders.convert_umt5` and
`convert_clip_vision`): the umT5 and CLIP vision params, and a ready `umt5.TextEncoder`. Kept
apart from the model modules so that they never import their converters."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtvjax.checkpoint.converted import checkpoint_id, load_converted
from mtvjax.checkpoint.manager import read_config
from mtvjax.models.layers.dtypes import DTYPES
from mtvjax.models.encoders import clip_vision as C
from mtvjax.models.encoders import umt5 as T


def load_umt5(directory, step: int | None = None) -> tuple[T.UMT5Config, dict]:
    """(config, float32 params) of a checkpoint written by `convert_umt5`."""
    return load_converted(directory, T.FAMILY, T.umt5_config, T.param_shapes, step)


def load_clip_vision(directory, step: int | None = None) -> tuple[C.CLIPVisionConfig, dict]:
    """(config, float32 params) of a checkpoint written by `convert_clip_vision`."""
    return load_converted(directory, C.FAMILY, C.clip_vision_config, C.param_shapes, step)


def text_encoder_from_checkpoint(directory, tokenizer, *, dtype: str | None = None,
                                 batch_size: int = 4) -> T.TextEncoder:
    """A `TextEncoder` from a checkpoint written by `convert_umt5` (params read on first use);
    `tokenizer` is a tokenizer or the folder to load one from. `dtype`: compute dtype override
    (the released pipeline runs umT5 in "bfloat16")."""
    fields, _ = read_config(str(directory))
    config = T.umt5_config(fields["model"])
    if dtype is not None:
        config = dataclasses.replace(config, dtype=dtype)
    if isinstance(tokenizer, (str, bytes)) or hasattr(tokenizer, "__fspath__"):
        tokenizer = T.load_tokenizer(tokenizer)

    def params():
        loaded = load_umt5(directory)[1]
        if config.dtype != "float32":   # halve the memory; Wan's weights are bf16 anyway
            loaded = jax.tree.map(lambda a: jnp.asarray(a, DTYPES[config.dtype]), loaded)
        return loaded

    return T.TextEncoder(params, config, tokenizer,
                         checkpoint_id=checkpoint_id(directory), batch_size=batch_size)
