"""Converts the released PyTorch 4DMoT checkpoint into an mtvjax Orbax checkpoint.

The source is the DeepSpeed file `mp_rank_00_model_states.pt` (state dict under `module`), a bare
state dict, or a `.safetensors` file. Names map through a table generated from the stage/block
structure (`name_table`); tensors change layout by a few shape rules (`RULES`). Every source and
every target entry must be used exactly once, with matching shapes, or `ConversionError` lists
the offending keys. The written checkpoint (step 0) holds a full `TrainState` and its config
JSON, so the model can be rebuilt and evaluated from the checkpoint folder alone.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.manager import Checkpointer, config_to_json
from mtvjax.config import load_config
from mtvjax.data.stats import load_stats
from mtvjax.train import fourdmot_step as steps

CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "4dmot.py"
INFERRED_FIELDS = ("channels", "num_res_blocks", "code_dim", "codebook_size", "joint_kernel")
CODEBOOK = ("quantizer", "codebook")

# rule name -> (source array -> target array, target shape -> expected source shape)
RULES = {
    "as_is": (lambda a: a, tuple),
    # Conv2d OIHW -> HWIO
    "conv2d": (lambda a: a.transpose(2, 3, 1, 0), lambda t: (t[3], t[2], t[0], t[1])),
    # Conv1d over joints OIK -> (1, K, I, O)
    "joint_conv": (lambda a: a.transpose(2, 1, 0)[None], lambda t: (t[3], t[2], t[1])),
}
RESBLOCK_LAYERS = (("block.0", "norm1", "norm"), ("block.2", "conv1", "conv2d"),
                   ("block.3", "norm2", "norm"), ("block.5", "conv2", "conv2d"))


class Entry(NamedTuple):
    source: str          # released state-dict key
    target: tuple        # ("params", ...) or ("quantizer", "codebook")
    rule: str            # key of RULES


class ConversionError(ValueError):
    """The source file cannot be converted; the message starts with the file's path."""

    def __init__(self, source, problem: str):
        super().__init__(f"{source}: {problem}")


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


def read_state_dict(path) -> dict[str, np.ndarray]:
    """Tensors of a `.safetensors` file, a DeepSpeed file (`module` entry) or a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        try:
            tensors = dict(load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - any unreadable content is one clear error
            raise ConversionError(path, f"cannot read safetensors ({type(e).__name__}: {e})") from e
    else:
        tensors = _read_torch(path)
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(path, f"cannot be read by torch.load(weights_only=True) "
                              f"({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        obj = obj["module"]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(path, f"expected a state dict or a dict with a 'module' state dict, "
                              f"got {type(obj).__name__}")
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if others:
        raise ConversionError(path, f"not a state dict: entries {others[:8]} are not tensors "
                              "(and there is no 'module' entry holding one)")
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items()}


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
    disagree = [f"{k}: file {v}, config {_plain(config.model[k])}" for k, v in inferred.items()
                if _plain(config.model[k]) != v]
    if disagree:
        name = variant if isinstance(variant, str) else config.get("variant", "given config")
        raise ConversionError(source, f"shapes disagree with variant {name!r}: "
                              + "; ".join(disagree))
    return config


def _plain(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def check_layout(shapes: dict, targets: dict, table: list[Entry], source) -> None:
    """Every source key and every target used exactly once, shapes agreeing; else one error
    listing unused source keys, missing keys and shape mismatches (in the file's layout)."""
    problems = []
    unused = sorted(set(shapes) - {e.source for e in table})
    missing = sorted(e.source for e in table if e.source not in shapes)
    unproduced = sorted("/".join(t) for t in set(targets) - {e.target for e in table})
    unknown = sorted("/".join(e.target) for e in table if e.target not in targets)
    for label, keys in (("unused source keys", unused), ("missing keys", missing),
                        ("target entries without a source", unproduced),
                        ("table entries without a target", unknown)):
        if keys:
            shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
            problems.append(f"{label}: {shown}")
    for entry in table:
        if entry.source in shapes and entry.target in targets:
            expected = RULES[entry.rule][1](targets[entry.target])
            if tuple(shapes[entry.source]) != expected:
                problems.append(f"{entry.source}: shape {tuple(shapes[entry.source])} in file, "
                                f"expected {expected}")
    if problems:
        raise ConversionError(source, "cannot convert to 4DMoT:\n  " + "\n  ".join(problems))


def map_tensors(tensors: dict, targets: dict, table: list[Entry], source) -> dict:
    """Checks the layout, then applies the table: `{target path: float32 array}`."""
    check_layout({k: np.shape(v) for k, v in tensors.items()}, targets, table, source)
    return {e.target: np.ascontiguousarray(RULES[e.rule][0](np.asarray(tensors[e.source])),
                                           dtype=np.float32) for e in table}


def target_shapes(abstract) -> dict:
    """`{target path: shape}` of an abstract `TrainState`: its params and the codebook."""
    flat = traverse_util.flatten_dict(abstract.params)
    targets = {("params",) + k: v.shape for k, v in flat.items()}
    targets[CODEBOOK] = abstract.quantizer["codebook"].shape
    return targets


def build_state(config, model, tx, arrays: dict, stats: dict) -> steps.TrainState:
    """A `TrainState` with converted params, a fresh optimiser and a filled quantizer."""
    params = traverse_util.unflatten_dict({k[1:]: jnp.asarray(v) for k, v in arrays.items()
                                           if k[0] == "params"})
    codebook = jnp.asarray(arrays[CODEBOOK])
    quantizer = {"codebook": codebook, "ema_sum": jnp.array(codebook),
                 "ema_count": jnp.ones((codebook.shape[0],), jnp.float32),
                 "initialized": jnp.array(True), "step": jnp.array(0, jnp.int32)}
    return steps.TrainState(
        step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params), quantizer=quantizer,
        stats={k: jnp.asarray(v, jnp.float32) for k, v in stats.items()},
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
    the model sizes read from the file). The written config uses the released normalisation:
    z-score with the given statistics files, no first-frame subtraction.
    """
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"{dst}: destination exists and is not an empty folder")
    tensors = read_state_dict(src)
    config = resolve_config({k: np.shape(v) for k, v in tensors.items()}, variant, src)
    config.normalization.differential = False
    config.normalization.mean_path = os.path.abspath(mean_path)
    config.normalization.std_path = os.path.abspath(std_path)
    stats = load_stats(mean_path, std_path)

    model, tx = steps.build_model(config.model), steps.make_optimizer(config)
    abstract = steps.abstract_state(config, model, tx)
    targets = target_shapes(abstract)
    arrays = map_tensors(tensors, targets, name_table(config.model), src)
    state = build_state(config, model, tx, arrays, stats)
    _check_like(state, abstract)

    num_params = int(sum(np.prod(v.shape) for v in jax.tree.leaves(abstract.params)))
    checkpointer = Checkpointer(dst, keep=None)
    checkpointer.save(0, state, None, config_to_json(config), force=True)
    checkpointer.wait()
    checkpointer.close()
    return {"src": str(src), "dst": dst, "step": 0, "variant": config.variant,
            "tensors": len(tensors),
            "trainable_params": num_params,
            "codebook": tuple(targets[CODEBOOK]),
            "model": {k: _plain(v) for k, v in config.model.items()},
            "mean_path": config.normalization.mean_path, "std_path": config.normalization.std_path}
