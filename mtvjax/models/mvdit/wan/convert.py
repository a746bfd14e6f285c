"""Converts PyTorch MV-DiT-17B (and base Wan-2.1-I2V-14B) transformer weights into mtvjax.

Sources (`open_source`): a diffusers-style folder (`*.safetensors.index.json` + shards, else
`diffusion_pytorch_model.bin`, else one or several `*.safetensors` merged, as the released
`from_pretrained` does, docs/reference/mvdit17b.md §3.2), or a single `.safetensors` file, or a `.pt` /
`.pth` / `.bin` file read with `torch.load(weights_only=True)`. Safetensors are memory-mapped
(`safe_open`) and read one tensor at a time; bfloat16 tensors go through torch.

Names map through a table generated from the block structure (`name_table`: a few patterns per
module); layouts change by a few shape rules (`RULES`); per-block tensors are stacked into the
scanned layout of `mtvjax.models.mvdit.wan.model` (`block_location`). Every source tensor and every
table entry must be used exactly once with matching shapes, or one `ConversionError` lists the
offending keys. The written Orbax checkpoint (step 0) holds `{"params": ...}` and a config JSON
(`{"family": "mvdit17b", "variant", "model": fields, "conversion": ...}`).

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

import json
import re
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.conversion import (ConversionError, TensorSource, folder_config, format_keys,
                                          strip_prefix)
from mtvjax.checkpoint.converted import jsonable, prepare_destination, restore_params, write_step0
from mtvjax.checkpoint.manager import read_config
from mtvjax.models.mvdit.wan import model as W
from mtvjax.models.layers.rope import wan_vision_rope
from mtvjax.models.mvdit.wan.blocks import WanMotionBranch
from mtvjax.models.mvdit.wan.lora import LoraPlan, lora_delta, read_lora

# rule -> (torch array, target slot shape -> array in the Flax layout;
#          target slot shape -> the torch shape it expects)
RULES: dict[str, tuple[Callable, Callable]] = {
    "as_is": (lambda a, t: a, lambda t: tuple(t)),
    # nn.Linear [out, in] -> Dense kernel [in, out]
    "linear": (lambda a, t: a.T, lambda t: (t[1], t[0])),
    # q/k/v Linear [n·d, in] -> DenseGeneral kernel [in, n, d] (channel = head·d + i)
    "heads_in": (lambda a, t: a.T.reshape(t), lambda t: (t[1] * t[2], t[0])),
    # q/k/v bias and full-width RMSNorm weight [n·d] -> [n, d]
    "heads_vec": (lambda a, t: a.reshape(t), lambda t: (t[0] * t[1],)),
    # o Linear [D, n·d] -> DenseGeneral kernel [n, d, D]
    "heads_out": (lambda a, t: a.T.reshape(t), lambda t: (t[2], t[0] * t[1])),
    # Conv3d [D, C, pt, ph, pw] -> kernel [pt, ph, pw, C, D] (patch vectors channel-last)
    "conv3d": (lambda a, t: a.transpose(2, 3, 4, 1, 0), lambda t: (t[4], t[3], t[0], t[1], t[2])),
    # modulation [1, k, D] -> [k, D]
    "squeeze0": (lambda a, t: a[0], lambda t: (1,) + tuple(t)),
}


class Entry(NamedTuple):
    source: str           # released (original Wan) state-dict key
    target: tuple         # path in `params`
    index: tuple          # stacking index inside the target (scan axes), () if unstacked
    rule: str             # key of RULES


# ----------------------------------------------------------------------------------------------
# Name table
# ----------------------------------------------------------------------------------------------



def _linear(src, dst, index=()):
    return [Entry(f"{src}.weight", dst + ("kernel",), index, "linear"),
            Entry(f"{src}.bias", dst + ("bias",), index, "as_is")]


def _norm(src, dst, index=()):
    return [Entry(f"{src}.weight", dst + ("scale",), index, "as_is"),
            Entry(f"{src}.bias", dst + ("bias",), index, "as_is")]


def _attention(src, dst, index, image: bool):
    """Released order: q, k, v, o, norm_q, norm_k[, k_img, v_img, norm_k_img] (§3.1)."""
    def proj(name):
        return [Entry(f"{src}.{name}.weight", dst + (name, "kernel"), index, "heads_in"),
                Entry(f"{src}.{name}.bias", dst + (name, "bias"), index, "heads_vec")]

    def norm(name):
        return [Entry(f"{src}.{name}.weight", dst + (name, "scale"), index, "heads_vec")]

    entries = proj("q") + proj("k") + proj("v")
    entries += [Entry(f"{src}.o.weight", dst + ("o", "kernel"), index, "heads_out"),
                Entry(f"{src}.o.bias", dst + ("o", "bias"), index, "as_is")]
    entries += norm("norm_q") + norm("norm_k")
    if image:
        entries += proj("k_img") + proj("v_img") + norm("norm_k_img")
    return entries


def block_entries(config: W.WanDiTConfig, i: int) -> list[Entry]:
    src = f"blocks.{i}"
    dst, index = W.block_location(config, i)
    entries = [Entry(f"{src}.modulation", dst + ("modulation",), index, "squeeze0")]
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
    """Released key → (Flax path, stacking index, rule), in the released key order (§3.1)."""
    config = W.wan_config(config)
    table = [Entry("patch_embedding.weight", ("patch_embedding", "kernel"), (), "conv3d"),
             Entry("patch_embedding.bias", ("patch_embedding", "bias"), (), "as_is")]
    table += _linear("text_embedding.0", ("text_embedding_0",))
    table += _linear("text_embedding.2", ("text_embedding_2",))
    table += _linear("time_embedding.0", ("time_embedding_0",))
    table += _linear("time_embedding.2", ("time_embedding_2",))
    table += _linear("time_projection.1", ("time_projection",))
    for i in range(config.num_layers):
        table += block_entries(config, i)
    table += [Entry("head.modulation", ("head", "modulation"), (), "squeeze0")]
    table += _linear("head.head", ("head", "head"))
    table += _norm("img_emb.proj.0", ("img_emb", "proj_0"))
    table += _linear("img_emb.proj.1", ("img_emb", "proj_1"))
    table += _linear("img_emb.proj.3", ("img_emb", "proj_3"))
    table += _norm("img_emb.proj.4", ("img_emb", "proj_4"))
    assert len({e.source for e in table}) == len(table)
    assert len({(e.target, e.index) for e in table}) == len(table)
    return table


def is_motion_key(key: str) -> bool:
    """Keys that exist only in MV-DiT-17B, not in Wan2.1-I2V-14B (§3.1 "new")."""
    return ".motion_attn." in key or ".norm4." in key


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
    (r"^blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
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


# ----------------------------------------------------------------------------------------------
# Tensor sources
# ----------------------------------------------------------------------------------------------

TORCH_WRAPPERS = ("module", "state_dict", "model")
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.")


def open_source(src) -> TensorSource:
    """A lazy tensor source for a folder or a single file (see the module docstring)."""
    path = Path(src)
    if path.is_dir():
        if sorted(path.glob("*.safetensors.index.json")):
            return TensorSource.open(path)
        if (path / "diffusion_pytorch_model.bin").is_file():
            return TensorSource.open_torch(path / "diffusion_pytorch_model.bin", TORCH_WRAPPERS)
        files = sorted(path.glob("*.safetensors"))
        if files:
            return TensorSource.merged_safetensors(files, path)
        torch_files = sorted(p for ext in ("*.bin", "*.pt", "*.pth") for p in path.glob(ext))
        if len(torch_files) == 1:
            return TensorSource.open_torch(torch_files[0], TORCH_WRAPPERS)
        raise ConversionError(path, "no safetensors index, diffusion_pytorch_model.bin or "
                              "*.safetensors file in this folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return TensorSource.merged_safetensors([path], path)
    return TensorSource.open_torch(path, TORCH_WRAPPERS)


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
# Model fields: inferred from shapes / config.json, checked against the variant
# ----------------------------------------------------------------------------------------------


def infer_fields(shapes: Mapping[str, tuple], with_motion: bool = True) -> dict:
    """Fields readable from released-name shapes. num_heads is not (the q/k norms span the full
    width); motion_dim neither (the zero-padded columns of motion_attn.k/v have full width)."""
    found = {}

    def get(field, fn):
        try:
            found[field] = fn()
        except KeyError:
            pass

    get("dim", lambda: int(shapes["patch_embedding.weight"][0]))
    get("in_channels", lambda: int(shapes["patch_embedding.weight"][1]))
    get("patch_size", lambda: tuple(int(s) for s in shapes["patch_embedding.weight"][2:]))
    get("text_dim", lambda: int(shapes["text_embedding.0.weight"][1]))
    get("freq_dim", lambda: int(shapes["time_embedding.0.weight"][1]))
    get("ffn_dim", lambda: int(shapes["blocks.0.ffn.0.weight"][0]))
    get("image_dim", lambda: int(shapes["img_emb.proj.1.weight"][1]))
    layers = sorted({int(m.group(1)) for k in shapes
                     if (m := re.match(r"blocks\.(\d+)\.", k))})
    if layers:
        found["num_layers"] = layers[-1] + 1
    if "patch_size" in found and "head.head.weight" in shapes:
        found["out_channels"] = int(shapes["head.head.weight"][0]) // int(
            np.prod(found["patch_size"]))
    if with_motion and layers:
        motion = sorted({int(m.group(1)) for k in shapes
                         if (m := re.match(r"blocks\.(\d+)\.motion_attn\.", k))})
        # a file without motion keys says nothing here (it is reported as missing keys)
        if motion:
            every = motion[1] - motion[0] if len(motion) > 1 else found["num_layers"]
            if motion == list(range(0, found["num_layers"], every)):
                found["motion_every"] = every
    return found


def fields_from_config_json(config: Mapping) -> dict:
    """Model fields named by a Wan (original or diffusers) `config.json`."""
    found = {}
    if "num_attention_heads" in config:  # diffusers
        n, d = int(config["num_attention_heads"]), int(config.get("attention_head_dim", 128))
        found.update(num_heads=n, dim=n * d)
        for src, dst in (("in_channels", "in_channels"), ("out_channels", "out_channels"),
                         ("text_dim", "text_dim"), ("freq_dim", "freq_dim"),
                         ("ffn_dim", "ffn_dim"), ("num_layers", "num_layers"), ("eps", "eps"),
                         ("image_dim", "image_dim"), ("patch_size", "patch_size")):
            if config.get(src) is not None:
                found[dst] = config[src]
    else:  # original Wan
        for src, dst in (("dim", "dim"), ("num_heads", "num_heads"), ("ffn_dim", "ffn_dim"),
                         ("freq_dim", "freq_dim"), ("in_dim", "in_channels"),
                         ("out_dim", "out_channels"), ("num_layers", "num_layers"),
                         ("text_len", "text_len"), ("eps", "eps"), ("text_dim", "text_dim"),
                         ("patch_size", "patch_size")):
            if config.get(src) is not None:
                found[dst] = config[src]
    if "patch_size" in found:
        found["patch_size"] = tuple(int(p) for p in found["patch_size"])
    return found


def resolve_config(shapes, variant, source, config_json=None,
                   with_motion: bool = True) -> tuple[W.WanDiTConfig, str]:
    """The variant's config checked against the file's shapes (and config.json); with
    `variant=None`, the 17b preset updated with what the file says (num_heads = dim / 128 unless
    config.json names it)."""
    inferred = infer_fields(shapes, with_motion)
    named = fields_from_config_json(config_json) if config_json else {}
    if variant is None:
        fields = {**W.wan_presets()["17b"], **named, **inferred}
        if "num_heads" not in named:
            fields["num_heads"] = max(1, fields["dim"] // 128)
        if fields.get("motion_dim", 0) > fields["dim"]:
            fields["motion_dim"] = fields["dim"]
        return W.wan_config(fields), "inferred"
    config = W.wan_config(variant)
    name = variant if isinstance(variant, str) else "given config"
    have = config.to_fields()
    disagree = []
    for origin, found in (("file", inferred), ("config.json", named)):
        for k, v in found.items():
            mine = tuple(have[k]) if isinstance(have[k], list) else have[k]
            if mine != v:
                disagree.append(f"{k}: {origin} {v}, variant {mine}")
    if disagree:
        raise ConversionError(source, f"shapes disagree with variant {name!r}: "
                              + "; ".join(disagree))
    return config, name


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def check_layout(source: TensorSource, table: list[Entry], targets: dict, label,
                 hint: str = "") -> None:
    """Every source key used once, every table key present, shapes as the rules expect; else
    one error listing unused keys, missing keys and shape mismatches."""
    problems = []
    wanted = {e.source for e in table}
    unused = sorted(source.describe(k) for k in set(source.keys()) - wanted)
    missing = sorted(e.source for e in table if e.source not in source.shapes)
    if unused:
        problems.append(f"unused source keys: {format_keys(unused)}")
    if missing:
        problems.append(f"missing keys: {format_keys(missing)}")
    for e in table:
        if e.source in source.shapes:
            slot = targets[e.target][len(e.index):]
            expected = RULES[e.rule][1](slot)
            if tuple(source.shapes[e.source]) != tuple(expected):
                problems.append(f"{source.describe(e.source)}: shape "
                                f"{tuple(source.shapes[e.source])} in file, expected {expected}")
    if problems:
        raise ConversionError(label, "cannot convert to MV-DiT-17B:\n  " + "\n  ".join(problems)
                              + (f"\n  ({hint})" if hint else ""))


def _check_table_covers(table, fresh: dict, targets: dict) -> None:
    """Internal consistency: table entries + fresh arrays fill every parameter slot once."""
    counts = {}
    for e in table:
        counts[e.target] = counts.get(e.target, 0) + 1
    for path, shape in targets.items():
        if path in fresh:
            continue
        stacked = next((len(e.index) for e in table if e.target == path), None)
        if stacked is None or counts[path] != int(np.prod(shape[:stacked])):
            raise AssertionError(f"name table does not fill {'/'.join(path)} {shape}")


def fresh_motion_params(config: W.WanDiTConfig, seed: int = 0,
                        zero_motion_out: bool = True) -> dict:
    """Freshly initialised norm4 + motion_attn for every motion block (Flax initialisers of the
    model, key folded with the block index), stacked like the model's params; plus
    `uncond_motion_tokens` ~ N(0, 1) when configured. `{path: float32 array}`."""
    branch = WanMotionBranch(config.num_heads, config.head_dim, config.eps,
                               config.heads_major_motion_keys)
    x = jnp.zeros((1, 1, config.dim), jnp.float32)
    motion = jnp.zeros((1, config.num_joints, config.dim), jnp.float32)
    q_rope = wan_vision_rope(1, 1, 1, config.head_dim)
    k_rope = W.released_motion_rope(1, config.head_dim)
    init = jax.jit(lambda key: nn.unbox(branch.init(key, x, motion, q_rope, k_rope)["params"]))
    base = jax.random.PRNGKey(seed)
    shapes = traverse_util.flatten_dict(W.param_shapes(config))
    out = {}
    for i in config.motion_blocks():
        prefix, index = W.block_location(config, i)
        params = traverse_util.flatten_dict(jax.device_get(init(jax.random.fold_in(base, i))))
        for sub, value in params.items():
            if zero_motion_out and sub[:2] == ("motion_attn", "o"):
                value = np.zeros_like(value)
            path = prefix + sub
            if path not in out:
                out[path] = np.zeros(shapes[path].shape, np.float32)
            out[path][index] = value
    if config.uncond_motion:
        key = jax.random.fold_in(base, config.num_layers)
        out[("uncond_motion_tokens",)] = np.asarray(jax.random.normal(
            key, (config.num_uncond_motion_tokens, config.motion_dim), jnp.float32))
    return out


def convert_source(source: TensorSource, config: W.WanDiTConfig, *, lora: LoraPlan | None = None,
                   fresh: dict | None = None, save_dtype=np.float32,
                   hint: str = "") -> tuple[dict, dict]:
    """Maps a (Wan-named) source into the model's params. Table entries whose target is in
    `fresh` are dropped (their arrays come from `fresh`). Returns (nested params of numpy arrays,
    report)."""
    fresh = fresh or {}
    shapes = {k: tuple(v.shape) for k, v in
              traverse_util.flatten_dict(W.param_shapes(config)).items()}
    table = [e for e in name_table(config) if e.target not in fresh]
    check_layout(source, table, shapes, source.path, hint)
    _check_table_covers(table, fresh, shapes)
    flat = {path: np.empty(shape, save_dtype) for path, shape in shapes.items()
            if path not in fresh}
    merged, seen = [], set()
    for e in table:
        array = source.get(e.source)
        if lora is not None:
            delta = lora_delta(lora, e.source, array.shape)
            if delta is not None:
                array = array + delta
                merged.append(e.source)
            seen.add(e.source)
        slot = shapes[e.target][len(e.index):]
        flat[e.target][e.index] = RULES[e.rule][0](array, slot).astype(save_dtype)
    for path, value in fresh.items():
        if tuple(value.shape) != shapes[path]:
            raise AssertionError(f"fresh {'/'.join(path)} {value.shape}, expected {shapes[path]}")
        flat[path] = np.asarray(value).astype(save_dtype)
    report = {"tensors": len(source.shapes), "fresh": sorted("/".join(p) for p in fresh)}
    if lora is not None:
        report.update(lora_merged=len(merged),
                      lora_skipped=sorted(k for k in lora.deltas if k not in seen),
                      lora_ignored=lora.ignored)
    return traverse_util.unflatten_dict(flat), report


def save_params(dst: str, params: dict, config: W.WanDiTConfig, variant: str,
                conversion: dict) -> None:
    """Writes `{"params": params}` and the config JSON as step 0 of an Orbax checkpoint. The JSON
    is shaped like a configs/mvdit.py config (`W.project_config`) plus a `conversion` report."""
    config_json = {**W.project_config(config), "variant": variant, "conversion": conversion}
    write_step0(dst, params, jsonable(config_json))


def load_converted(directory, step: int | None = None) -> tuple[W.WanDiTConfig, dict]:
    """(config, params) of a checkpoint written by the converters (params in the saved dtype,
    float32 by default)."""
    directory = str(directory)
    config_json, step = read_config(directory, step)
    family = config_json.get("model", {}).get("family")
    if family != W.FAMILY:
        raise ValueError(f"{directory}: not an MV-DiT-17B (wan) checkpoint (family {family!r})")
    config = W.wan_config(config_json)
    dtype = config_json.get("conversion", {}).get("save_dtype", "float32")
    return config, restore_params(directory, W.param_shapes(config), step, dtype)


def _save_dtype(name: str):
    import ml_dtypes
    return {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[name]


def convert_state_dict(source, variant="17b", *, lora=None, lora_scale: float = 1.0,
                       base: bool = False, seed: int = 0, zero_motion_out: bool = True,
                       save_dtype: str = "float32") -> tuple[W.WanDiTConfig, dict, dict]:
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
            fresh = fresh_motion_params(config, seed, zero_motion_out)
            # motion modules come from `fresh`, so their table entries are dropped
        elif config.uncond_motion:
            fresh = {k: v for k, v in fresh_motion_params(config, seed).items()
                     if k == ("uncond_motion_tokens",)}
        hint = ("a Wan2.1-I2V base checkpoint has no motion modules: use convert_wan_base"
                if not base and not motion_keys and config.motion_every else "")
        if lora is not None:
            plan = read_lora(open_source(lora), lora_scale)
        params, report = convert_source(source, config, lora=plan, fresh=fresh,
                                        save_dtype=_save_dtype(save_dtype), hint=hint)
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
    counts = {"total_params": W.count_params(params),
              "trainable_params": W.count_params(
                  [v for k, v in traverse_util.flatten_dict(params).items()
                   if W.is_trainable_path(k)])}
    save_params(dst, params, config, report["variant"], {**report, **counts})
    return {**report, **counts, "dst": dst, "step": 0, "model": config.to_fields()}


def convert_mvdit17b(src, dst, lora=None, variant="17b", *, lora_scale: float = 1.0,
                     save_dtype: str = "float32", seed: int = 0) -> dict:
    """Converts the released MV-DiT-17B at `src` (folder or file) into an Orbax checkpoint
    (step 0) under `dst`, merging the LoRA file `lora` at `lora_scale` first when given.
    `variant`: a preset name of `mvdit_wan.wan_presets()`, a fields dict, or None (read from the
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
