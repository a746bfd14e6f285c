"""Converts PyTorch MV-DiT-17B (and base Wan-2.1-I2V-14B) transformer weights into mtvjax.

Sources: `mtvjax.models.mvdit.wan.source.open_source` (diffusers-style folders, safetensors,
torch files), read one tensor at a time.

Names map through a table generated from the block structure (`name_table`: a few patterns per
module); layouts change by a few shape rules (`RULES`); per-block tensors are stacked into the
scanned layout of `mtvjax.models.mvdit.wan.model` (`block_location`, `stacked_axes`: a plain
block's slot is (group, block)). The table, the layout check and the filling are those of the
conversion kit `mtvjax.checkpoint.conversion`: every source tensor and every parameter slot must
be used exactly once with matching shapes, or one `ConversionError` lists the offending keys.
On top of the kit this module renames diffusers keys and merges a LoRA into each tensor as it
is read. The written Orbax checkpoint (step 0) holds
`{"params": ...}` and a config JSON (`{"family": "mvdit17b", "variant", "model": fields,
"conversion": ...}`).

* `convert_mvdit17b(src, dst, lora=None, variant="17b")`: the released MTVCrafter checkpoint
  (`MV-DiT/Wan-2-1`), optionally merging a Wan LoRA the way the released pipeline does (§3.3,
  `mtvjax.models.mvdit.wan.lora`); names matching no parameter are skipped (reported). The merge
  is done in float32 (the released one in bfloat16 on bfloat16 weights).
* `convert_wan_base(src, dst, variant="17b")`: a Wan2.1-I2V-14B transformer, in diffusers naming
  (`condition_embedder.*`, `attn1`, `attn2.add_k_proj`, ...) or the original Wan naming, into the
  17B layout with the motion modules (norm4 + motion_attn, and unconditional tokens when
  configured) freshly initialised; `zero_motion_out=True` (default) zeroes motion_attn.o so the
  converted model starts as exactly the base model.

Naming differences diffusers ↔ original Wan (the document's names): `condition_embedder.
time_embedder.linear_{1,2}` ↔ `time_embedding.{0,2}`, `condition_embedder.time_proj` ↔
`time_projection.1`, `condition_embedder.text_embedder.linear_{1,2}` ↔ `text_embedding.{0,2}`,
`condition_embedder.image_embedder.{norm1, ff.net.0.proj, ff.net.2, norm2}` ↔
`img_emb.proj.{0,1,3,4}`, `blocks.N.attn1.to_{q,k,v}` / `to_out.0` / `norm_{q,k}` ↔
`self_attn.{q,k,v,o,norm_q,norm_k}`, `attn2.*` ↔ `cross_attn.*` with `add_k_proj` / `add_v_proj` /
`norm_added_k` ↔ `k_img` / `v_img` / `norm_k_img`, `blocks.N.norm2` (affine, cross-attention) ↔
`blocks.N.norm3` (diffusers' norm3 is the parameter-free FFN norm, Wan's norm2), `ffn.net.0.proj`
/ `ffn.net.2` ↔ `ffn.0` / `ffn.2`, `blocks.N.scale_shift_table` ↔ `blocks.N.modulation`,
`scale_shift_table` ↔ `head.modulation`, `proj_out` ↔ `head.head`.
"""
from __future__ import annotations

import functools
import re
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.conversion import (AS_IS, LINEAR, ConversionError, Entry, Rule, TensorSource,
                                          check_layout, fill_targets, folder_config, format_keys,
                                          strip_prefix)
from mtvjax.checkpoint.converted import (SAVE_DTYPES, jsonable, prepare_destination, restore_params,
                                         write_step0)
from mtvjax.checkpoint.manager import read_config
from mtvjax.models.layers.param_tree import count_params
from mtvjax.models.layers.rope import wan_vision_rope
from mtvjax.models.mvdit.wan.blocks import WanMotionBranch
from mtvjax.models.mvdit.wan.config import (FAMILY, WanDiTConfig, block_location, project_config,
                                            stacked_axes, wan_config)
from mtvjax.models.mvdit.wan.lora import LoraPlan, lora_delta, read_lora
from mtvjax.models.mvdit.wan.source import PREFIXES, open_source, resolve_config
from mtvjax.models.mvdit.wan.model import (is_trainable_path, param_logical_axes, param_shapes,
                                           released_motion_rope)
from mtvjax.parallel.sharding import param_shardings

# torch array -> Flax layout, given the target slot shape; the torch shape a slot expects
RULES: dict[str, Rule] = {
    "as_is": AS_IS,
    "linear": LINEAR,   # nn.Linear [out, in] -> Dense kernel [in, out]
    # q/k/v Linear [n·d, in] -> DenseGeneral kernel [in, n, d] (channel = head·d + i)
    "heads_in": Rule(lambda a, t: a.T.reshape(t), lambda t: [(t[1] * t[2], t[0])]),
    # q/k/v bias and full-width RMSNorm weight [n·d] -> [n, d]
    "heads_vec": Rule(lambda a, t: a.reshape(t), lambda t: [(t[0] * t[1],)]),
    # o Linear [D, n·d] -> DenseGeneral kernel [n, d, D]
    "heads_out": Rule(lambda a, t: a.T.reshape(t), lambda t: [(t[2], t[0] * t[1])]),
    # Conv3d [D, C, pt, ph, pw] -> kernel [pt, ph, pw, C, D] (patch vectors channel-last)
    "conv3d": Rule(lambda a, t: a.transpose(2, 3, 4, 1, 0),
                   lambda t: [(t[4], t[3], t[0], t[1], t[2])]),
    # modulation [1, k, D] -> [k, D]
    "squeeze0": Rule(lambda a, t: a[0], lambda t: [(1,) + tuple(t)]),
}


# ----------------------------------------------------------------------------------------------
# Name table
# ----------------------------------------------------------------------------------------------


def _linear(src, dst, index=None):
    return [Entry(f"{src}.weight", dst + ("kernel",), "linear", index),
            Entry(f"{src}.bias", dst + ("bias",), "as_is", index)]


def _norm(src, dst, index=None):
    return [Entry(f"{src}.weight", dst + ("scale",), "as_is", index),
            Entry(f"{src}.bias", dst + ("bias",), "as_is", index)]


def _attention(src, dst, index, image: bool):
    """Released order: q, k, v, o, norm_q, norm_k[, k_img, v_img, norm_k_img] (§3.1)."""
    def proj(name):
        return [Entry(f"{src}.{name}.weight", dst + (name, "kernel"), "heads_in", index),
                Entry(f"{src}.{name}.bias", dst + (name, "bias"), "heads_vec", index)]

    def norm(name):
        return [Entry(f"{src}.{name}.weight", dst + (name, "scale"), "heads_vec", index)]

    entries = proj("q") + proj("k") + proj("v")
    entries += [Entry(f"{src}.o.weight", dst + ("o", "kernel"), "heads_out", index),
                Entry(f"{src}.o.bias", dst + ("o", "bias"), "as_is", index)]
    entries += norm("norm_q") + norm("norm_k")
    if image:
        entries += proj("k_img") + proj("v_img") + norm("norm_k_img")
    return entries


def block_entries(config: WanDiTConfig, i: int) -> list[Entry]:
    src = f"blocks.{i}"
    dst, index = block_location(config, i)
    entries = [Entry(f"{src}.modulation", dst + ("modulation",), "squeeze0", index)]
    entries += _attention(f"{src}.self_attn", dst + ("self_attn",), index, image=False)
    entries += _norm(f"{src}.norm3", dst + ("norm3",), index)
    entries += _attention(f"{src}.cross_attn", dst + ("cross_attn",), index, image=True)
    if i in config.motion_blocks():
        entries += _norm(f"{src}.norm4", dst + ("norm4",), index)
        entries += _attention(f"{src}.motion_attn", dst + ("motion_attn",), index, image=False)
    entries += _linear(f"{src}.ffn.0", dst + ("ffn_0",), index)
    entries += _linear(f"{src}.ffn.2", dst + ("ffn_2",), index)
    return entries


def name_table(config) -> list[Entry]:
    """Released key → (Flax path, rule, stacking index), in the released key order (§3.1)."""
    config = wan_config(config)
    table = [Entry("patch_embedding.weight", ("patch_embedding", "kernel"), "conv3d"),
             Entry("patch_embedding.bias", ("patch_embedding", "bias"), "as_is")]
    table += _linear("text_embedding.0", ("text_embedding_0",))
    table += _linear("text_embedding.2", ("text_embedding_2",))
    table += _linear("time_embedding.0", ("time_embedding_0",))
    table += _linear("time_embedding.2", ("time_embedding_2",))
    table += _linear("time_projection.1", ("time_projection",))
    for i in range(config.num_layers):
        table += block_entries(config, i)
    table += [Entry("head.modulation", ("head", "modulation"), "squeeze0")]
    table += _linear("head.head", ("head", "head"))
    table += _norm("img_emb.proj.0", ("img_emb", "proj_0"))
    table += _linear("img_emb.proj.1", ("img_emb", "proj_1"))
    table += _linear("img_emb.proj.3", ("img_emb", "proj_3"))
    table += _norm("img_emb.proj.4", ("img_emb", "proj_4"))
    return table


def is_motion_key(key: str) -> bool:
    """Keys that exist only in MV-DiT-17B, not in Wan2.1-I2V-14B (§3.1 "new")."""
    return ".motion_attn." in key or ".norm4." in key


# ----------------------------------------------------------------------------------------------
# diffusers names
# ----------------------------------------------------------------------------------------------

# diffusers WanTransformer3DModel -> original Wan names (the document's)
DIFFUSERS_TO_WAN = [(re.compile(p), r) for p, r in [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    *[(rf"^blocks\.(\d+)\.{attn}\.{src}", rf"blocks.\1.{wan}.{dst}")
      for attn, wan in (("attn1", "self_attn"), ("attn2", "cross_attn"))
      for src, dst in ((r"to_([qkv])\.", r"\2."), (r"to_out\.0\.", "o."),
                       (r"norm_([qk])\.", r"norm_\2."))],
    (r"^blocks\.(\d+)\.attn2\.add_k_proj\.", r"blocks.\1.cross_attn.k_img."),
    (r"^blocks\.(\d+)\.attn2\.add_v_proj\.", r"blocks.\1.cross_attn.v_img."),
    (r"^blocks\.(\d+)\.attn2\.norm_added_k\.", r"blocks.\1.cross_attn.norm_k_img."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
]]


def diffusers_to_wan_name(key: str) -> str:
    for pattern, repl in DIFFUSERS_TO_WAN:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def renamed(source: TensorSource, rename: Callable[[str], str]) -> TensorSource:
    """A view with keys `rename(key)`; errors still show the file's key."""
    names, back = {}, {}
    for key in source.shapes:
        new = names[key] = rename(key)
        if new in back:
            raise ConversionError(source.path, f"keys {back[new]!r} and {key!r} both map to "
                                  f"{new!r}")
        back[new] = key
    if all(k == v for k, v in names.items()):
        return source
    return source.renamed(names)


def is_diffusers_layout(keys) -> bool:
    return any(k.startswith("condition_embedder.") for k in keys)


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def fresh_motion_params(config: WanDiTConfig, seed: int = 0, zero_motion_out: bool = True,
                        dtype=np.float32) -> dict:
    """Freshly initialised norm4 + motion_attn for every motion block (Flax initialisers of the
    model, key folded with the block index), stacked like the model's params; plus
    `uncond_motion_tokens` ~ N(0, 1) when configured. `{path: array in dtype}`, each block
    cast as it is made."""
    branch = WanMotionBranch(config.num_heads, config.head_dim, config.eps,
                               config.heads_major_motion_keys)
    x = jnp.zeros((1, 1, config.dim), jnp.float32)
    motion = jnp.zeros((1, config.num_joints, config.dim), jnp.float32)
    q_rope = wan_vision_rope(1, 1, 1, config.head_dim)
    k_rope = released_motion_rope(1, config.head_dim)
    init = jax.jit(lambda key: nn.unbox(branch.init(key, x, motion, q_rope, k_rope)["params"]))
    base = jax.random.PRNGKey(seed)
    shapes = traverse_util.flatten_dict(param_shapes(config))
    out = {}
    for i in config.motion_blocks():
        prefix, index = block_location(config, i)
        params = traverse_util.flatten_dict(jax.device_get(init(jax.random.fold_in(base, i))))
        for sub, value in params.items():
            if zero_motion_out and sub[:2] == ("motion_attn", "o"):
                value = np.zeros_like(value)
            path = prefix + sub
            if path not in out:
                out[path] = np.zeros(shapes[path].shape, dtype)
            out[path][index] = value
    if config.uncond_motion:
        key = jax.random.fold_in(base, config.num_layers)
        out[("uncond_motion_tokens",)] = np.asarray(jax.random.normal(
            key, (config.num_uncond_motion_tokens, config.motion_dim), jnp.float32)).astype(dtype)
    return out


def convert_source(source: TensorSource, config: WanDiTConfig, *, lora: LoraPlan | None = None,
                   fresh: dict | None = None, save_dtype=np.float32,
                   hint: str = "") -> tuple[dict, dict]:
    """Maps a (Wan-named) source into the model's params, adding the LoRA deltas to each tensor
    as it is read. Table entries whose target is in `fresh` are dropped (their arrays come from
    `fresh`). Returns (nested params of numpy arrays, report)."""
    fresh = fresh or {}
    shapes = {k: tuple(v.shape) for k, v in
              traverse_util.flatten_dict(param_shapes(config)).items()}
    table = [e for e in name_table(config) if e.target not in fresh]
    mapped = {path: shape for path, shape in shapes.items() if path not in fresh}
    check_layout(source.shapes, mapped, table, RULES, source.path, what="MV-DiT-17B",
                 stacked=functools.partial(stacked_axes, config), describe=source.describe,
                 hint=hint)
    merged = []

    def merged_get(key):
        array = source.get(key)
        delta = None if lora is None else lora_delta(lora, key, array.shape)
        if delta is None:
            return array
        merged.append(key)
        return array + delta

    flat = fill_targets(merged_get, mapped, table, RULES, save_dtype)
    for path, value in fresh.items():
        if tuple(value.shape) != shapes[path]:
            raise AssertionError(f"fresh {'/'.join(path)} {value.shape}, expected {shapes[path]}")
        flat[path] = np.asarray(value).astype(save_dtype)
    report = {"tensors": len(source.shapes), "fresh": sorted("/".join(p) for p in fresh)}
    if lora is not None:
        read = {e.source for e in table}
        report.update(lora_merged=len(merged),
                      lora_skipped=sorted(k for k in lora.deltas if k not in read),
                      lora_ignored=lora.ignored)
    return traverse_util.unflatten_dict(flat), report


def save_params(dst: str, params: dict, config: WanDiTConfig, variant: str,
                conversion: dict) -> None:
    """Writes `{"params": params}` and the config JSON as step 0 of an Orbax checkpoint. The JSON
    is shaped like a configs/mvdit.py config (`project_config`) plus a `conversion` report."""
    config_json = {**project_config(config), "variant": variant, "conversion": conversion}
    write_step0(dst, params, jsonable(config_json))


def load_converted(directory, step: int | None = None, *, dtype=None, mesh=None,
                   rules=()) -> tuple[WanDiTConfig, dict]:
    """(config, params) of a checkpoint written by the converters: floating params in `dtype`
    (None: the dtype they were saved in; another one is cast shard by shard as it is read) and,
    with a `mesh`, each placed in the sharding its logical axes get by `rules` (FSDP / tensor),
    read shard by shard onto the devices (`mtvjax.checkpoint.converted.restore_params`)."""
    directory = str(directory)
    config_json, step = read_config(directory, step)
    family = config_json.get("model", {}).get("family")
    if family != FAMILY:
        raise ValueError(f"{directory}: not an MV-DiT-17B (wan) checkpoint (family {family!r})")
    config = wan_config(config_json)
    shapes = param_shapes(config)
    shardings = (None if mesh is None
                 else param_shardings(param_logical_axes(config), shapes, mesh, rules))
    return config, restore_params(directory, shapes, step, dtype, shardings)


def convert_state_dict(source, variant="17b", *, lora=None, lora_scale: float = 1.0,
                       base: bool = False, seed: int = 0, zero_motion_out: bool = True,
                       save_dtype: str = "float32") -> tuple[WanDiTConfig, dict, dict]:
    """In-memory conversion: `source` is a path or an open `TensorSource`. Returns (config, params,
    report). `base=True` treats it as a Wan2.1-I2V base model (motion modules fresh)."""
    own = not isinstance(source, TensorSource)
    src_label = source if own else source.path
    source = open_source(source) if own else source
    plan = None
    try:
        source = strip_prefix(source, PREFIXES)
        if is_diffusers_layout(source.keys()):
            source = renamed(source, diffusers_to_wan_name)
        motion_keys = sorted(k for k in source.keys() if is_motion_key(k))
        if base and motion_keys:
            raise ConversionError(src_label, "a base-model conversion got MV-DiT motion keys "
                                  f"({format_keys(motion_keys, 4)}); use convert_mvdit17b")
        config_json = folder_config(src_label) if own else None
        config, name = resolve_config(source.shapes, variant, src_label, config_json,
                                      with_motion=not base)
        fresh = {}
        if base:
            fresh = fresh_motion_params(config, seed, zero_motion_out, SAVE_DTYPES[save_dtype])
            # motion modules come from `fresh`, so their table entries are dropped
        elif config.uncond_motion:
            fresh = {k: v for k, v in fresh_motion_params(config, seed).items()
                     if k == ("uncond_motion_tokens",)}
        hint = ("a Wan2.1-I2V base checkpoint has no motion modules: use convert_wan_base"
                if not base and not motion_keys and config.motion_every else "")
        if lora is not None:
            plan = read_lora(open_source(lora), lora_scale)
        params, report = convert_source(source, config, lora=plan, fresh=fresh,
                                        save_dtype=SAVE_DTYPES[save_dtype], hint=hint)
    finally:
        if plan is not None:
            plan.source.close()
        if own:
            source.close()
    report.update(src=str(src_label), variant=name, base=base, save_dtype=save_dtype,
                  lora=None if lora is None else str(lora), lora_scale=lora_scale)
    return config, params, report


def _convert_and_save(src, dst, **kwargs) -> dict:
    dst = prepare_destination(dst)
    config, params, report = convert_state_dict(src, **kwargs)
    counts = {"total_params": count_params(params),
              "trainable_params": count_params(
                  [v for k, v in traverse_util.flatten_dict(params).items()
                   if is_trainable_path(k)])}
    save_params(dst, params, config, report["variant"], {**report, **counts})
    return {**report, **counts, "dst": dst, "step": 0, "model": config.to_fields()}


def convert_mvdit17b(src, dst, lora=None, variant="17b", *, lora_scale: float = 1.0,
                     save_dtype: str = "float32", seed: int = 0) -> dict:
    """Converts the released MV-DiT-17B at `src` (folder or file) into an Orbax checkpoint
    (step 0) under `dst`, merging the LoRA file `lora` at `lora_scale` first when given.
    `variant`: a preset name of `wan_presets()`, a fields dict, or None (read from the
    file). Returns a summary dict."""
    return _convert_and_save(src, dst, variant=variant, lora=lora, lora_scale=lora_scale,
                             save_dtype=save_dtype, seed=seed)


def convert_wan_base(src, dst, variant="17b", *, lora=None, lora_scale: float = 1.0,
                     seed: int = 0, zero_motion_out: bool = True,
                     save_dtype: str = "float32") -> dict:
    """Converts a Wan2.1-I2V-14B transformer (diffusers or original naming) into the 17B layout
    with fresh motion modules (see the module docstring)."""
    return _convert_and_save(src, dst, variant=variant, lora=lora, lora_scale=lora_scale,
                             base=True, seed=seed, zero_motion_out=zero_motion_out,
                             save_dtype=save_dtype)
