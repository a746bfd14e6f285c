"""Converts the released PyTorch 4DMoT checkpoint into 4DMoT variables.

The source is the DeepSpeed file `mp_rank_00_model_states.pt` (state dict under `module`), a bare
state dict, or a `.safetensors` file, read through the conversion kit's `TensorSource`. Names map
through a table generated from the stage/block structure (`name_table`); tensors change layout by
a few shape rules (`RULES`). Every source and every target entry must be used exactly once, with
matching shapes, or `ConversionError` lists the offending keys. `convert_state` gives the
inference state (parameters, a filled quantizer, the normalisation statistics) and the config;
`mtvjax.train.fourdmot_released` writes it as a step-0 train-state checkpoint.
"""
from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from mtvjax.checkpoint import conversion
from mtvjax.checkpoint.conversion import (AS_IS, ConversionError, Entry, Rule, TensorSource,
                                          fill_targets)
from mtvjax.config import load_config
from mtvjax.data.stats import load_stats
from mtvjax.models.fourdmot.build import build_model
from mtvjax.models.fourdmot.tokenizer import TokenizerState, abstract_state

CONFIG_FILE = Path(__file__).resolve().parents[3] / "configs" / "4dmot.py"
INFERRED_FIELDS = ("channels", "num_res_blocks", "code_dim", "codebook_size", "joint_kernel")
CODEBOOK = ("quantizer", "codebook")
DEEPSPEED_PREFIX = "module."

RULES = {
    "as_is": AS_IS,
    # Conv2d OIHW -> HWIO
    "conv2d": Rule(lambda a, t: a.transpose(2, 3, 1, 0), lambda t: [(t[3], t[2], t[0], t[1])]),
    # Conv1d over joints OIK -> (1, K, I, O)
    "joint_conv": Rule(lambda a, t: a.transpose(2, 1, 0)[None], lambda t: [(t[3], t[2], t[1])]),
}
RESBLOCK_LAYERS = (("block.0", "norm1", "norm"), ("block.2", "conv1", "conv2d"),
                   ("block.3", "norm2", "norm"), ("block.5", "conv2", "conv2d"))


def _layer(src: str, dst: tuple, kind: str):
    """Entries of one torch layer: a conv (`conv2d`/`joint_conv`) or a GroupNorm (`norm`)."""
    if kind == "norm":
        return [Entry(f"{src}.weight", dst + ("scale",), "as_is"),
                Entry(f"{src}.bias", dst + ("bias",), "as_is")]
    return [Entry(f"{src}.weight", dst + ("kernel",), kind),
            Entry(f"{src}.bias", dst + ("bias",), "as_is")]


def _resblock(src: str, dst: tuple, projects: bool):
    entries = [e for s, d, kind in RESBLOCK_LAYERS
               for e in _layer(f"{src}.{s}", dst + (d,), kind)]
    if projects:
        entries += _layer(f"{src}.conv_short", dst + ("conv_short",), "conv2d")
    return entries


def _half(side: str, widths, num_res_blocks: int, joint_conv: str, flax_suffix: str):
    """Encoder or decoder: stage s has `resnet{2s}` (s > 0, width change), `resnet{2s+1}.{i}`,
    then `{joint_conv}` with s + 1 substituted; Flax names them `stage{s}_*`."""
    prefix = ("params", side)
    entries = _layer(f"{side}.conv_in", prefix + ("conv_in",), "conv2d")
    for s, width in enumerate(widths):
        if s > 0:
            if widths[s - 1] == width:
                raise ValueError(f"the released layout changes width between stages, got {widths}")
            entries += _resblock(f"{side}.resnet{2 * s}", prefix + (f"stage{s}_transition",), True)
        for i in range(num_res_blocks):
            entries += _resblock(f"{side}.resnet{2 * s + 1}.{i}", prefix + (f"stage{s}_block{i}",),
                                 False)
        entries += _layer(f"{side}.{joint_conv.format(s + 1)}",
                          prefix + (f"stage{s}_{flax_suffix}", "conv"), "joint_conv")
    return entries + _layer(f"{side}.conv_out", prefix + ("conv_out",), "conv2d")


def name_table(model_config) -> list[Entry]:
    """Released key → Flax target for a model config (channels, num_res_blocks)."""
    channels, blocks = tuple(model_config["channels"]), model_config["num_res_blocks"]
    table = (_half("encoder", channels, blocks, "downsample{}.joint_downsample", "down")
             + _half("decoder", channels[::-1], blocks, "upsample{}.upsampler", "up")
             + [Entry("vq.codebook", CODEBOOK, "as_is")])
    assert len({e.source for e in table}) == len({e.target for e in table}) == len(table)
    return table


def open_source(path) -> TensorSource:
    """The file's tensors, read lazily; DeepSpeed's `module.` key prefix removed."""
    source = TensorSource.open(path)
    keys = list(source.keys())
    if not (keys and all(k.startswith(DEEPSPEED_PREFIX) for k in keys)):
        return source
    bare = {k: k[len(DEEPSPEED_PREFIX):] for k in keys}
    return TensorSource(source.path, {bare[k]: source.shapes[k] for k in keys},
                        {bare[k]: functools.partial(source.get, k) for k in keys},
                        closers=[source.close])


def infer_model_config(shapes: dict, source="state dict", required: bool = True) -> dict:
    """Model fields readable from `{key: shape}`; with `required=False` skips what is missing."""
    found = {}

    def get(field, fn):
        try:
            found[field] = fn()
        except KeyError as e:
            if required:
                raise ConversionError(source, f"cannot infer {field}: key {e.args[0]!r} is "
                                      "missing") from None

    def stage_widths():
        widths, s = [], 1
        while f"encoder.downsample{s}.joint_downsample.weight" in shapes:
            widths.append(int(shapes[f"encoder.downsample{s}.joint_downsample.weight"][0]))
            s += 1
        if not widths:
            raise KeyError("encoder.downsample1.joint_downsample.weight")
        return tuple(widths)

    def blocks():
        n = 0
        while f"encoder.resnet1.{n}.block.2.weight" in shapes:
            n += 1
        if n == 0:
            raise KeyError("encoder.resnet1.0.block.2.weight")
        return n

    get("channels", stage_widths)
    get("num_res_blocks", blocks)
    get("code_dim", lambda: int(shapes["encoder.conv_out.weight"][0]))
    get("codebook_size", lambda: int(shapes["vq.codebook"][0]))
    get("joint_kernel", lambda: int(shapes["encoder.downsample1.joint_downsample.weight"][-1]))
    return found


def load_variant(variant: str) -> ml_collections.ConfigDict:
    """`get_config(variant)` of the repository's configs/4dmot.py."""
    if not CONFIG_FILE.is_file():
        raise FileNotFoundError(f"{CONFIG_FILE} not found; pass a ConfigDict as `variant` instead")
    return load_config(f"{CONFIG_FILE}:{variant}")


def resolve_config(shapes: dict, variant, source) -> ml_collections.ConfigDict:
    """The variant's config checked against the file's shapes, or `released` with inferred fields.

    `num_groups`, `dilation_reference` and `window_frames` cannot be read from shapes; they come
    from the variant (`released` when `variant` is None).
    """
    if variant is None:
        config = load_variant("released")
        config.model.update({k: v for k, v in infer_model_config(shapes, source).items()})
        return config
    config = load_variant(variant) if isinstance(variant, str) else copy.deepcopy(variant)
    inferred = infer_model_config(shapes, source, required=False)
    disagree = [f"{k}: file {v}, config {plain(config.model[k])}" for k, v in inferred.items()
                if plain(config.model[k]) != v]
    if disagree:
        name = variant if isinstance(variant, str) else config.get("variant", "given config")
        raise ConversionError(source, f"shapes disagree with variant {name!r}: "
                              + "; ".join(disagree))
    return config


def plain(v):
    """Lists and tuples as tuples (config values compared or reported)."""
    return tuple(v) if isinstance(v, (list, tuple)) else v


def check_layout(shapes: dict, targets: dict, table: list[Entry], source) -> None:
    """Every source key and every target used exactly once, shapes agreeing; else one error
    listing unused source keys, missing keys and shape mismatches (in the file's layout)."""
    conversion.check_layout(shapes, targets, table, RULES, source, what="4DMoT")


def target_shapes(abstract) -> dict:
    """`{target path: shape}` of an abstract state (`params`, `quantizer`): params and codebook."""
    flat = traverse_util.flatten_dict(abstract.params)
    targets = {("params",) + k: v.shape for k, v in flat.items()}
    targets[CODEBOOK] = abstract.quantizer["codebook"].shape
    return targets


def filled_quantizer(codebook) -> dict:
    """The quantizer state of a trained codebook: EMA sums equal to it, unit counts, an empty
    `ever_used` mask (the file holds no EMA history: fine-tuning observes usage afresh, as the
    released trainer does when it starts from these weights)."""
    codebook = jnp.asarray(codebook)
    return {"codebook": codebook, "ema_sum": jnp.array(codebook),
            "ema_count": jnp.ones((codebook.shape[0],), jnp.float32),
            "initialized": jnp.array(True), "step": jnp.array(0, jnp.int32),
            "ever_used": jnp.zeros((codebook.shape[0],), jnp.bool_)}


def convert_state(src, mean_path, std_path, variant="released"):
    """(config, `TokenizerState` at step 0, number of source tensors) of the released file `src`.

    `variant` is a name in configs/4dmot.py, a ConfigDict, or None (the `released` config with
    the model sizes read from the file). The config uses the released normalisation: z-score
    with the given statistics files, no first-frame subtraction.
    """
    with open_source(src) as source:
        config = resolve_config(dict(source.shapes), variant, src)
        config.normalization.differential = False
        config.normalization.mean_path = os.path.abspath(mean_path)
        config.normalization.std_path = os.path.abspath(std_path)
        targets = target_shapes(abstract_state(build_model(config.model)))
        table = name_table(config.model)
        check_layout(dict(source.shapes), targets, table, src)
        arrays = fill_targets(source.get, targets, table, RULES)
        count = len(source.shapes)
    stats = load_stats(mean_path, std_path)
    state = TokenizerState(
        step=jnp.array(0, jnp.int32),
        params=traverse_util.unflatten_dict({k[1:]: jnp.asarray(v) for k, v in arrays.items()
                                             if k[0] == "params"}),
        quantizer=filled_quantizer(arrays[CODEBOOK]),
        stats={k: jnp.asarray(v, jnp.float32) for k, v in stats.items()})
    return config, state, count

