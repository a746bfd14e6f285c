"""Reading a PyTorch MV-DiT-17B / Wan-2.1-I2V-14B transformer checkpoint for
`mtvjax.models.mvdit.wan.convert`: opening it, and the model fields it implies.

`open_source`: a diffusers-style folder (`*.safetensors.index.json` + shards, else
`diffusion_pytorch_model.bin`, else one or several `*.safetensors` merged, as the released
`from_pretrained` does, docs/reference/mvdit17b.md §3.2), or a single `.safetensors` file, or a
`.pt` / `.pth` / `.bin` file read with `torch.load(weights_only=True)` (state dict, or one under
`TORCH_WRAPPERS`); `PREFIXES` are key prefixes a converter strips. Safetensors are memory-mapped
(`safe_open`) and read one tensor at a time; bfloat16 tensors go through torch.

`resolve_config`: the variant's `WanDiTConfig` checked against what the released-name shapes
(`infer_fields`) and a Wan / diffusers `config.json` (`fields_from_config_json`) say, or built
from them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from mtvjax.checkpoint.conversion import ConversionError, TensorSource
from mtvjax.models.mvdit.wan.config import WanDiTConfig, wan_config, wan_presets

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
                   with_motion: bool = True) -> tuple[WanDiTConfig, str]:
    """The variant's config checked against the file's shapes (and config.json); with
    `variant=None`, the 17b preset updated with what the file says (num_heads = dim / 128 unless
    config.json names it)."""
    inferred = infer_fields(shapes, with_motion)
    named = fields_from_config_json(config_json) if config_json else {}
    if variant is None:
        fields = {**wan_presets()["17b"], **named, **inferred}
        if "num_heads" not in named:
            fields["num_heads"] = max(1, fields["dim"] // 128)
        if fields.get("motion_dim", 0) > fields["dim"]:
            fields["motion_dim"] = fields["dim"]
        return wan_config(fields), "inferred"
    config = wan_config(variant)
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
