"""Converts PyTorch MV-DiT-17B (and base Wan-2.1-I2V-14B) transformer weights into mtvjax.

Sources (`open_source`): a diffusers-style folder (`*.safetensors.index.json` + shards, else
`diffusion_pytorch_model.bin`, else one or several `*.safetensors` merged, as the released
`from_pretrained` does, reference_mvdit17b.md §3.2), or a single `.safetensors` file, or a `.pt` /
`.pth` / `.bin` file read with `torch.load(weights_only=True)`. Safetensors are memory-mapped
(`safe_open`) and read one tensor at a time; bfloat16 tensors go through torch.

Names map through a table generated from the block structure (`name_table`: a few patterns per
module); layouts change by a few shape rules (`RULES`); per-block tensors are stacked into the
scanned layout of `mtvjax.models.mvdit.wan.model` (`block_location`). Every source tensor and every
table entry must be used exactly once with matching shapes, or one `ConversionError` lists the
offending keys. The written Orbax checkpoint (step 0) holds `{"params": ...}` and a config JSON
(`{"family": "mvdit17b", "variant", "model": fields, "conversion": ...}`).

* `convert_mvdit17b(src, dst, lora=None, variant="17b")`: the released MTVCrafter checkpoint
  (`MV-DiT/Wan-2-1`), optionally merging a Wan LoRA the way the released pipeline does (§3.3):
  keys `diffusion_model.<p>.lora_down.weight` / `.lora_up.weight` → `<p>.weight += up @ down ·
  scale` (no alpha/rank factor; `.alpha` ignored), `<p>.diff_b` → `<p>.bias += diff_b · scale`,
  `<p>.diff` → `<p>.weight += diff · scale`; names matching no parameter are skipped (reported).
  The merge is done in float32 (the released one in bfloat16 on bfloat16 weights).
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
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.manager import Checkpointer, abstract_like, read_config
from mtvjax.models.mvdit.wan import model as W
from mtvjax.models.layers.rope import wan_vision_rope
from mtvjax.models.mvdit.wan.blocks import WanMotionBranch

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


class ConversionError(ValueError):
    """The source cannot be converted; the message starts with the source's path."""

    def __init__(self, source, problem: str):
        super().__init__(f"{source}: {problem}")


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
# Tensor sources (lazy, memory-mapped)
# ----------------------------------------------------------------------------------------------


class TensorSource:
    """Lazy `{key: tensor}`: `shapes` is known up front, `get(key)` reads one tensor as float32."""

    def __init__(self, label, shapes: dict[str, tuple], getter: Callable[[str], np.ndarray],
                 closer: Callable[[], None] = lambda: None,
                 describe: Callable[[str], str] = lambda k: k):
        self.label, self.shapes, self._get, self._close = label, shapes, getter, closer
        self.describe = describe

    def keys(self):
        return self.shapes.keys()

    def get(self, key: str) -> np.ndarray:
        return np.asarray(self._get(key), dtype=np.float32)

    def close(self):
        self._close()

    def renamed(self, rename: Callable[[str], str]) -> "TensorSource":
        """A view with keys `rename(key)`; errors still show the file's key."""
        back = {}
        for key in self.shapes:
            new = rename(key)
            if new in back:
                raise ConversionError(self.label, f"keys {back[new]!r} and {key!r} both map to "
                                      f"{new!r}")
            back[new] = key
        if all(k == v for k, v in back.items()):
            return self
        return TensorSource(self.label, {k: self.shapes[v] for k, v in back.items()},
                            lambda k: self._get(back[k]), self._close,
                            lambda k: k if back.get(k, k) == k else f"{k} (file key {back[k]})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _SafetensorsFiles:
    """Keys of one or several safetensors files, read through `safe_open` (memory-mapped)."""

    def __init__(self, label, files: Iterable[Path], index: Mapping[str, str] | None = None):
        from safetensors import safe_open
        self.label, self.handles, self.where, self.dtypes, self.shapes = label, {}, {}, {}, {}
        self._torch_handles = {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="numpy")
            except Exception as e:  # noqa: BLE001 - unreadable content is one clear error
                raise ConversionError(path, f"cannot read safetensors ({type(e).__name__}: "
                                      f"{e})") from e
            self.handles[path] = handle
            for key in handle.keys():
                if key in self.where:
                    raise ConversionError(label, f"key {key!r} appears in both "
                                          f"{self.where[key].name} and {path.name}")
                piece = handle.get_slice(key)
                self.where[key] = path
                self.shapes[key] = tuple(piece.get_shape())
                self.dtypes[key] = piece.get_dtype()
        if index is not None:
            problems = []
            for key, shard in index.items():
                if self.where.get(key) is None:
                    problems.append(f"{key} (index names shard {shard}, which lacks it)")
                elif self.where[key].name != Path(shard).name:
                    problems.append(f"{key} (index names {shard}, found in "
                                    f"{self.where[key].name})")
            extra = sorted(set(self.where) - set(index))
            problems += [f"{k} (in {self.where[k].name}, not in the index)" for k in extra]
            if problems:
                raise ConversionError(label, "index and shards disagree: "
                                      + _shown(problems))

    def get(self, key):
        path = self.where[key]
        if self.dtypes[key] in ("BF16", "F8_E4M3", "F8_E5M2"):
            if path not in self._torch_handles:
                from safetensors import safe_open
                self._torch_handles[path] = safe_open(str(path), framework="pt")
            return self._torch_handles[path].get_tensor(key).float().numpy()
        return self.handles[path].get_tensor(key)

    def source(self) -> TensorSource:
        return TensorSource(self.label, self.shapes, self.get, self.close)

    def close(self):
        self.handles.clear()
        self._torch_handles.clear()


def _read_torch(path: Path) -> TensorSource:
    import torch
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(path, f"cannot be read by torch.load(weights_only=True) "
                              f"({type(e).__name__}: {e})") from e
    for wrapper in ("module", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(path, f"expected a state dict, got {type(obj).__name__}")
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if others:
        raise ConversionError(path, f"not a state dict: entries {others[:8]} are not tensors")
    return TensorSource(path, {k: tuple(v.shape) for k, v in obj.items()},
                        lambda k: obj[k].detach().to(torch.float32).numpy())


def open_source(src) -> TensorSource:
    """A lazy tensor source for a folder or a single file (see the module docstring)."""
    path = Path(src)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise ConversionError(path, f"several index files: {[p.name for p in indexes]}")
        if indexes:
            try:
                weight_map = json.loads(indexes[0].read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ConversionError(indexes[0], f"not a safetensors index ({e})") from e
            shards = sorted({path / name for name in weight_map.values()})
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise ConversionError(path, f"shards named by {indexes[0].name} are missing: "
                                      f"{missing}")
            return _SafetensorsFiles(path, shards, weight_map).source()
        if (path / "diffusion_pytorch_model.bin").is_file():
            return _read_torch(path / "diffusion_pytorch_model.bin")
        files = sorted(path.glob("*.safetensors"))
        if files:
            return _SafetensorsFiles(path, files).source()
        torch_files = sorted(p for ext in ("*.bin", "*.pt", "*.pth") for p in path.glob(ext))
        if len(torch_files) == 1:
            return _read_torch(torch_files[0])
        raise ConversionError(path, "no safetensors index, diffusion_pytorch_model.bin or "
                              "*.safetensors file in this folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return _SafetensorsFiles(path, [path]).source()
    return _read_torch(path)


def _strip_prefix(source: TensorSource) -> TensorSource:
    for prefix in ("model.diffusion_model.", "diffusion_model.", "module."):
        if source.shapes and all(k.startswith(prefix) for k in source.shapes):
            return source.renamed(lambda k, p=prefix: k[len(p):])
    return source


def is_diffusers_layout(keys) -> bool:
    return any(k.startswith("condition_embedder.") for k in keys)


def folder_config(src) -> dict | None:
    """`config.json` next to the weights, if any."""
    path = Path(src)
    path = path if path.is_dir() else path.parent
    if (path / "config.json").is_file():
        try:
            return json.loads((path / "config.json").read_text())
        except ValueError as e:
            raise ConversionError(path / "config.json", f"invalid JSON ({e})") from e
    return None


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
# LoRA (released wan_lora.py merge, §3.3)
# ----------------------------------------------------------------------------------------------

LORA_PREFIX = "diffusion_model."


class LoraPlan(NamedTuple):
    deltas: dict          # target key -> list of ("lowrank", up, down) / ("full", key)
    source: TensorSource
    scale: float
    ignored: list         # keys without the prefix, .alpha and unknown suffixes


def read_lora(path, scale: float = 1.0) -> LoraPlan:
    source = open_source(path)
    deltas, ignored, downs, ups = {}, [], {}, {}
    for key in source.keys():
        if not key.startswith(LORA_PREFIX):
            ignored.append(key)
            continue
        name = key[len(LORA_PREFIX):]
        if name.endswith(".lora_down.weight"):
            downs[name[:-len(".lora_down.weight")]] = key
        elif name.endswith(".lora_up.weight"):
            ups[name[:-len(".lora_up.weight")]] = key
        elif name.endswith(".diff_b"):
            deltas.setdefault(name[:-len(".diff_b")] + ".bias", []).append(("full", key))
        elif name.endswith(".diff"):
            deltas.setdefault(name[:-len(".diff")] + ".weight", []).append(("full", key))
        else:  # e.g. `.alpha`: the released merge ignores it
            ignored.append(key)
    unpaired = sorted(set(downs) ^ set(ups))
    if unpaired:
        raise ConversionError(path, "LoRA pairs incomplete (lora_down without lora_up or the "
                              "reverse): " + _shown([LORA_PREFIX + p for p in unpaired]))
    for p in sorted(downs):
        deltas.setdefault(p + ".weight", []).append(("lowrank", ups[p], downs[p]))
    return LoraPlan(deltas, source, float(scale), sorted(ignored))


def lora_delta(plan: LoraPlan, key: str, shape: tuple) -> np.ndarray | None:
    """Sum of the LoRA deltas for released key `key` (float32), or None."""
    total = None
    for item in plan.deltas.get(key, ()):
        if item[0] == "lowrank":
            up, down = plan.source.get(item[1]), plan.source.get(item[2])
            if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
                raise ConversionError(plan.source.label, f"{item[1]} {up.shape} and {item[2]} "
                                      f"{down.shape} do not multiply")
            delta = (up @ down) * np.float32(plan.scale)
            names = f"{item[1]} @ {item[2]}"
        else:
            delta = plan.source.get(item[1]) * np.float32(plan.scale)
            names = item[1]
        if tuple(delta.shape) != tuple(shape):
            raise ConversionError(plan.source.label, f"{names} gives shape {delta.shape} for "
                                  f"{key} of shape {tuple(shape)}")
        total = delta if total is None else total + delta
    return total


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def _shown(keys, limit=20) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_layout(source: TensorSource, table: list[Entry], targets: dict, label,
                 hint: str = "") -> None:
    """Every source key used once, every table key present, shapes as the rules expect; else
    one error listing unused keys, missing keys and shape mismatches."""
    problems = []
    wanted = {e.source for e in table}
    unused = sorted(source.describe(k) for k in set(source.keys()) - wanted)
    missing = sorted(e.source for e in table if e.source not in source.shapes)
    if unused:
        problems.append(f"unused source keys: {_shown(unused)}")
    if missing:
        problems.append(f"missing keys: {_shown(missing)}")
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
    check_layout(source, table, shapes, source.label, hint)
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


def _prepare_destination(dst) -> str:
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"{dst}: destination exists and is not an empty folder")
    return dst


def save_params(dst: str, params: dict, config: W.WanDiTConfig, variant: str,
                conversion: dict) -> None:
    """Writes `{"params": params}` and the config JSON as step 0 of an Orbax checkpoint. The JSON
    is shaped like a configs/mvdit.py config (`W.project_config`) plus a `conversion` report."""
    config_json = {**W.project_config(config), "variant": variant, "conversion": conversion}
    checkpointer = Checkpointer(str(dst), keep=None)
    checkpointer.save(0, {"params": params}, None, _jsonable(config_json), force=True)
    checkpointer.wait()
    checkpointer.close()


def _jsonable(tree):
    return json.loads(json.dumps(tree, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


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
    abstract = {"params": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype)),
                                       W.param_shapes(config))}
    checkpointer = Checkpointer(directory, keep=None, create=False)
    state = checkpointer.restore(step, abstract_like(abstract))
    checkpointer.close()
    return config, state["params"]


def _save_dtype(name: str):
    import ml_dtypes
    return {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[name]


def convert_state_dict(source, variant="17b", *, lora=None, lora_scale: float = 1.0,
                       base: bool = False, seed: int = 0, zero_motion_out: bool = True,
                       save_dtype: str = "float32") -> tuple[W.WanDiTConfig, dict, dict]:
    """In-memory conversion: `source` is a path or an open `TensorSource`. Returns (config, params,
    report). `base=True` treats it as a Wan2.1-I2V base model (motion modules fresh)."""
    own = not isinstance(source, TensorSource)
    src_label = source if own else source.label
    source = open_source(source) if own else source
    plan = None
    try:
        source = _strip_prefix(source)
        if is_diffusers_layout(source.keys()):
            source = source.renamed(diffusers_to_wan_name)
        motion_keys = sorted(k for k in source.keys() if is_motion_key(k))
        if base and motion_keys:
            raise ConversionError(src_label, "a base-model conversion got MV-DiT motion keys "
                                  f"({_shown(motion_keys, 4)}); use convert_mvdit17b")
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
            plan = read_lora(lora, lora_scale)
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
    dst = _prepare_destination(dst)
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
