"""Converts MV-DiT-7B transformer weights into an mtvjax Orbax checkpoint.

Two sources (`source_format`, "auto" picks by the presence of `unconditional_motion_token` or
`attn0` keys):

* "mvdit7b": the released MTVCrafter transformer (docs/reference/mvdit7b.md §2): every tensor maps to
  exactly one Flax parameter (slot).
* "cogvideox": the diffusers CogVideoX(-5B) transformer the paper starts from. Its tensors map
  the same way, except that
    - `patch_embed.proj.weight` [D, 16, p, p] is widened to the 32 input channels: the new rows
      (reference-latent channels 16–31) are **zero**, so the reference latents start with no
      effect and the base model's behaviour is preserved (a 32-channel I2V base is taken as is);
    - the motion cross-attention `attn0` of every motion block is **freshly initialised**:
      to_q/to_k/to_v weights and biases U(−1/√D, 1/√D) (torch.nn.Linear's default), per-head
      norms scale 1 / bias 0, and `to_out` **zero** when `model.motion_out_zero_init` (default;
      the ungated attn0 then adds nothing and the base output is unchanged), else
      U(−1/√D, 1/√D);
    - `unconditional_motion_token` is freshly drawn from N(0, 1), as the release's `torch.randn`.
  The base model's text path (text tokens in attn1, the text-stream AdaLN rows) is not used by
  MV-DiT; its weights are kept where the released layout keeps them (`text_proj`, dead rows).

Names map through a table generated from the block structure (`name_table`); tensors change
layout by a few shape rules (`rules`): torch Linear [out, in] → kernel [in, out]; Conv2d patch
weight [D, C, p, p] → kernel [C·p·p, D] with rows in (c, dy, dx) order; per-layer tensors go to
slot ⌊n / k⌋ of the stacked `blocks/block_{n mod k}` parameters (k = motion_every, 1 released).
Every source tensor and every target slot is used exactly once, or `ConversionError` names the
offending keys. Tensors are read one at a time through memory-mapped `safe_open` (or a
memory-mapped `torch.load`), so peak memory is about the converted parameters plus one tensor.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.converted import (SAVE_DTYPES, jsonable, prepare_destination,
                                         restore_params, write_step0)
from mtvjax.checkpoint.manager import config_to_json, read_config
from mtvjax.checkpoint.conversion import (AS_IS, LINEAR, ConversionError, Entry, Rule, TensorSource,
                                      check_layout, fill_targets)
from mtvjax.config import load_config
from mtvjax.models.mvdit.cogvideox import model as mv
from mtvjax.parallel.sharding import param_shardings

CONFIG_FILE = Path(__file__).resolve().parents[4] / "configs" / "mvdit.py"
SOURCE_FORMATS = ("auto", "mvdit7b", "cogvideox")
UNCOND = ("unconditional_motion_token",)
ATTN_PROJ = (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out.0", "to_out"))
BLOCK_LAYERS = (  # (torch name, flax path, kind) inside a block, attn0 apart
    ("norm1.linear", ("norm1", "linear"), "linear"), ("norm1.norm", ("norm1", "norm"), "norm"),
    ("norm2.linear", ("norm2", "linear"), "linear"), ("norm2.norm", ("norm2", "norm"), "norm"),
    ("ff.net.0.proj", ("ff", "net_0"), "linear"), ("ff.net.2", ("ff", "net_2"), "linear"))
TOP_LAYERS = (
    ("patch_embed.proj", ("patch_embed", "proj"), "patch"),
    ("patch_embed.text_proj", ("patch_embed", "text_proj"), "linear"),
    ("time_embedding.linear_1", ("time_embedding", "linear_1"), "linear"),
    ("time_embedding.linear_2", ("time_embedding", "linear_2"), "linear"),
    ("norm_final", ("norm_final",), "norm"),
    ("norm_out.linear", ("norm_out", "linear"), "linear"),
    ("norm_out.norm", ("norm_out", "norm"), "norm"),
    ("proj_out", ("proj_out",), "linear"))


def rules(patch_size: int, base_channels: int) -> dict[str, Rule]:
    """Shape rules; `patch_widen` accepts a patch weight with `base_channels` (or all) input
    channels and zero-fills the remaining kernel rows."""
    p = patch_size

    def patch(a, t):
        return a.reshape(a.shape[0], -1).T

    def widen(a, t):
        out = np.zeros(t, np.float32)
        rows = a.shape[1] * p * p
        out[:rows] = a.reshape(a.shape[0], -1).T
        return out

    return {
        "as_is": AS_IS,
        "linear": LINEAR,
        "patch": Rule(patch, lambda t: [(t[1], t[0] // (p * p), p, p)]),
        "patch_widen": Rule(widen, lambda t: [(t[1], t[0] // (p * p), p, p),
                                              (t[1], base_channels, p, p)]),
    }


def _layer(src: str, dst: tuple, kind: str, index=None) -> list[Entry]:
    if kind == "norm":
        return [Entry(f"{src}.weight", dst + ("scale",), "as_is", index),
                Entry(f"{src}.bias", dst + ("bias",), "as_is", index)]
    return [Entry(f"{src}.weight", dst + ("kernel",), kind, index),
            Entry(f"{src}.bias", dst + ("bias",), "as_is", index)]


def _attention(src: str, dst: tuple, index: int, v_norm: bool = False) -> list[Entry]:
    norms = ("norm_q", "norm_k") + (("norm_v",) if v_norm else ())
    entries = [e for n in norms for e in _layer(f"{src}.{n}", dst + (n,), "norm", index)]
    return entries + [e for s, d in ATTN_PROJ for e in _layer(f"{src}.{s}", dst + (d,), "linear",
                                                                index)]


def block_slot(layer: int, motion_every: int) -> tuple[tuple, int, bool]:
    """(flax block path, stack slot, has attn0) of torch `transformer_blocks.{layer}`."""
    k = motion_every or 1
    group, r = divmod(layer, k)
    return ("blocks", f"block_{r}"), group, motion_every > 0 and r == 0


def name_table(model_config, source_format: str = "mvdit7b") -> list[Entry]:
    """Source key → Flax target (slot) for a `config.model`; "cogvideox" omits what the base
    lacks (attn0, the unconditional token) and widens the patch embedding."""
    m = model_config
    base = source_format == "cogvideox"
    table = [] if base or not m.uncond_motion_shape else [Entry(UNCOND[0], UNCOND, "as_is")]
    for src, dst, kind in TOP_LAYERS:
        if src == "patch_embed.text_proj" and not m.text_embed_dim:
            continue
        if kind == "patch" and base:
            kind = "patch_widen"
        table += _layer(src, dst, kind)
    for n in range(m.num_layers):
        path, slot, motion = block_slot(n, m.motion_every)
        src = f"transformer_blocks.{n}"
        if motion and not base:
            table += _attention(f"{src}.attn0", path + ("attn0",), slot, m.motion_v_norm)
        table += _attention(f"{src}.attn1", path + ("attn1",), slot)
        table += [e for s, d, kind in BLOCK_LAYERS
                  for e in _layer(f"{src}.{s}", path + d, kind, slot)]
    return table


def is_stacked(path: tuple) -> bool:
    return path[0] == "blocks"


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def load_variant(variant: str) -> ml_collections.ConfigDict:
    if not CONFIG_FILE.is_file():
        raise FileNotFoundError(f"{CONFIG_FILE} not found; pass a ConfigDict as `variant`")
    return load_config(f"{CONFIG_FILE}:{variant}")


def infer_model_config(shapes: dict, source_format: str) -> dict:
    """Model fields readable from `{key: shape}` (those present)."""
    found = {}
    n = 0
    while f"transformer_blocks.{n}.attn1.to_q.weight" in shapes:
        n += 1
    if n:
        found["num_layers"] = n
    q = shapes.get("transformer_blocks.0.attn1.norm_q.weight")
    width = shapes.get("transformer_blocks.0.attn1.to_q.weight")
    if q and width:
        found["head_dim"] = int(q[0])
        found["num_heads"] = int(width[0]) // int(q[0])
    if "time_embedding.linear_1.weight" in shapes:
        found["time_embed_dim"] = int(shapes["time_embedding.linear_1.weight"][0])
    found["text_embed_dim"] = int(shapes.get("patch_embed.text_proj.weight", (0, 0))[1])
    patch = shapes.get("patch_embed.proj.weight")
    if patch:
        found["patch_size"] = int(patch[-1])
        if source_format == "mvdit7b":
            found["in_channels"] = int(patch[1])
        if "proj_out.weight" in shapes:
            found["out_channels"] = int(shapes["proj_out.weight"][0]) // int(patch[-1]) ** 2
    if source_format == "mvdit7b":
        found["uncond_motion_shape"] = tuple(shapes.get(UNCOND[0], ())) or None
        motion = [i for i in range(n) if f"transformer_blocks.{i}.attn0.to_q.weight" in shapes]
        if motion:
            found["motion_every"] = motion[1] - motion[0] if len(motion) > 1 else n
        elif n:
            found["motion_every"] = 0
        found["motion_v_norm"] = "transformer_blocks.0.attn0.norm_v.weight" in shapes
    return found


def _plain(v):
    return tuple(_plain(x) for x in v) if isinstance(v, (list, tuple)) else v


def resolve_config(shapes: dict, variant, source_format: str, source) -> ml_collections.ConfigDict:
    """The variant's config checked against the file, or (variant None) the `7b` config with
    the sizes read from the file."""
    inferred = infer_model_config(shapes, source_format)
    if variant is None:
        config = load_variant("7b")
        config.model.update({k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in inferred.items() if v is not None})
        if inferred.get("uncond_motion_shape", ()) is None:
            config.model.uncond_motion_shape = ()
        return config
    config = load_variant(variant) if isinstance(variant, str) else copy.deepcopy(variant)
    name = variant if isinstance(variant, str) else config.get("variant", "given config")
    disagree = [f"{k}: file {v}, config {_plain(config.model[k]) or None}"
                for k, v in inferred.items() if (_plain(config.model[k]) or None) != (v or None)]
    if disagree:
        raise ConversionError(source, f"shapes disagree with variant {name!r}: "
                              + "; ".join(disagree))
    return config


# ----------------------------------------------------------------------------------------------
# Fresh parameters for the base-model path
# ----------------------------------------------------------------------------------------------


def fresh_targets(targets: dict, model_config) -> dict:
    """Targets the CogVideoX base has no tensor for: attn0 (every leaf) and the uncond token."""
    return {p: s for p, s in targets.items()
            if p == UNCOND or (is_stacked(p) and "attn0" in p)}


def init_fresh(fresh: dict, width: int, zero_out: bool, seed: int, dtype=np.float32) -> dict:
    """numpy initialisation of `fresh` targets (module docstring), drawn in float32 and stored
    in `dtype` as each is made."""
    rng = np.random.default_rng(seed)
    out = {}
    bound = np.float32(1.0 / np.sqrt(width))
    for path in sorted(fresh):
        shape = tuple(fresh[path])
        leaf, owner = path[-1], path[-2] if len(path) > 1 else ""
        if path == UNCOND:
            value = rng.standard_normal(shape, np.float32)
        elif owner.startswith("norm_"):
            value = np.ones(shape, np.float32) if leaf == "scale" else np.zeros(shape, np.float32)
        elif owner == "to_out" and zero_out:
            value = np.zeros(shape, np.float32)
        else:
            value = rng.uniform(-bound, bound, shape).astype(np.float32)
        out[path] = value.astype(dtype)
    return out


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def detect_format(keys) -> str:
    keys = set(keys)
    if UNCOND[0] in keys or any(".attn0." in k for k in keys):
        return "mvdit7b"
    return "cogvideox"


def target_shapes(model) -> dict:
    """`{path: shape}` of the model's abstract params."""
    flat = traverse_util.flatten_dict(mv.abstract_params(model))
    return {k: tuple(v.shape) for k, v in flat.items()}


def load_params(src, variant="7b", source_format: str = "auto", seed: int = 0,
                joint_positions_path: str | None = None, save_dtype: str = "float32"):
    """Reads and converts `src`: (config, numpy params tree in `save_dtype`, summary dict),
    each tensor cast as it is placed (no float32 copy of the whole model). No checkpoint is
    written; `convert_mvdit7b` does that."""
    dtype = SAVE_DTYPES[save_dtype]
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source_format {source_format!r}; expected {SOURCE_FORMATS}")
    with TensorSource.open(src) as source:
        fmt = detect_format(source.keys()) if source_format == "auto" else source_format
        config = resolve_config(source.shapes, variant, fmt, src)
        if joint_positions_path:
            joints = mv.load_joint_positions(path=joint_positions_path)
            config.model.joint_positions = joints.tolist()
            config.model.joint_positions_path = os.path.abspath(joint_positions_path)
        model = mv.from_config(config)
        targets = target_shapes(model)
        table = name_table(config.model, fmt)
        fresh = fresh_targets(targets, config.model) if fmt == "cogvideox" else {}
        mapped = {p: s for p, s in targets.items() if p not in fresh}
        check_layout(source.shapes, mapped, table, rules(config.model.patch_size,
                                                         config.model.out_channels),
                     src, what=f"MV-DiT-7B ({fmt} source)", stacked=is_stacked)
        arrays = fill_targets(source.get, mapped, table,
                              rules(config.model.patch_size, config.model.out_channels), dtype)
        arrays.update(init_fresh(fresh, model.width, config.model.motion_out_zero_init, seed,
                                 dtype))
        num_tensors = len(source.shapes)
    params = traverse_util.unflatten_dict(arrays)
    summary = {"src": str(src), "source_format": fmt, "variant": config.variant,
               "tensors": num_tensors, "fresh": sorted("/".join(p) for p in fresh),
               "params": int(sum(a.size for a in arrays.values())), "save_dtype": save_dtype,
               "joint_positions": _joints_note(config.model)}
    return config, params, summary


def _joints_note(m) -> str:
    if m.get("joint_positions"):
        return f"stored in the config ({m.joint_positions_path or 'given values'})"
    if m.get("joint_positions_path"):
        return f"read from {m.joint_positions_path} when the model is built"
    return ("zeros: the motion RoPE's x/y/z bands are unrotated; pass joint_positions_path "
            "(the release's data/mean.npy) for the released behaviour")


def convert_mvdit7b(src, dst, variant="7b", source_format: str = "auto", seed: int = 0,
                    joint_positions_path: str | None = None, save_dtype: str = "float32") -> dict:
    """Converts `src` (module docstring) into an Orbax checkpoint (step 0) under `dst`:
    `{"params": ...}` plus the config JSON, from which `restore_mvdit7b` rebuilds the model.

    `variant`: a name in configs/mvdit.py, a ConfigDict, or None (the `7b` config with the sizes
    read from the file). `joint_positions_path`: the dataset `mean.npy` for the motion RoPE; its
    values are stored in the config. `seed` drives the fresh parameters of the base path.
    `save_dtype` ("float32" | "bfloat16"): the stored parameters' dtype, recorded in the config
    JSON's `conversion` report.
    """
    dst = prepare_destination(dst)
    config, params, summary = load_params(src, variant, source_format, seed,
                                          joint_positions_path, save_dtype)
    save_params(dst, params, config, summary)
    return {**summary, "dst": dst, "step": 0}


def save_params(dst, params, config, conversion: dict | None = None) -> None:
    """Writes `{"params": params}` and the config JSON (with the `conversion` report, when
    given) as step 0 under `dst`."""
    config_json = config_to_json(config)
    if conversion is not None:
        config_json["conversion"] = jsonable(conversion)
    write_step0(dst, params, config_json)


def restore_mvdit7b(directory, step: int | None = None, *, params_dtype=None, mesh=None,
                    rules=(), **model_overrides):
    """(config, model, params) of a converted checkpoint; params as jax arrays, floating ones in
    `params_dtype` (None: as saved; another dtype is cast shard by shard as it is read) and,
    with a `mesh`, each in the sharding its logical axes get by `rules` (FSDP / tensor), read
    shard by shard onto the devices (`mtvjax.checkpoint.converted.restore_params`)."""
    config_json, step = read_config(directory, step)
    config = ml_collections.ConfigDict(config_json)
    model = mv.from_config(config, **model_overrides)
    shapes = mv.abstract_params(model)
    shardings = (None if mesh is None
                 else param_shardings(mv.logical_axes(model), shapes, mesh, rules))
    return config, model, restore_params(directory, shapes, step, params_dtype, shardings)


def check_like(params, model) -> None:
    """`params` has exactly the structure and shapes of the model's."""
    abstract = mv.abstract_params(model)
    if jax.tree.structure(params) != jax.tree.structure(abstract):
        raise AssertionError("converted params differ in structure from the model's")
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree.leaves(abstract)):
        if a.shape != b.shape:
            raise AssertionError(f"{jax.tree_util.keystr(path)}: {a.shape}, model {b.shape}")
