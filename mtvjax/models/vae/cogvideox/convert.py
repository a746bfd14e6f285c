"""Converts diffusers-format CogVideoX VAE weights (`AutoencoderKLCogVideoX`) into an mtvjax
Orbax checkpoint for `mtvjax.models.vae.cogvideox.model`.

Sources: a diffusers VAE folder (`diffusion_pytorch_model.safetensors` + `config.json`), a
pipeline folder holding `vae/`, a `.safetensors` file, or a torch file read with
`torch.load(weights_only=True)` (`conversion.TensorSource`).

Names map through a table generated from the block structure (`name_table`): torch
`encoder.down_blocks.{i}.resnets.{j}.conv1.conv.weight` → Flax
`encoder/down_blocks_{i}/resnets_{j}/conv1/kernel`, and so on; the inner `.conv` of causal convs
and resamplers is dropped, GroupNorm `weight` becomes `scale`. Layout rules: Conv3d
`[O, I, kt, kh, kw]` → `[kt, kh, kw, I, O]`, Conv2d `[O, I, kh, kw]` → `[kh, kw, I, O]`. Every
source tensor and every target is used exactly once, or `ConversionError` names the keys.

The config: `variant` names a preset of `cogvideox_vae_presets()` (or is a dict / ConfigDict of
the VAE fields); sizes read from the tensors and the fields of a `config.json` next to the
weights must agree with it. `variant=None` takes the `config.json` when there is one, else
`cogvideox-5b` with the sizes read from the tensors. The checkpoint stores
`{"variant": ..., "vae": {fields}}` as its config JSON.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import ml_collections
import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.converted import prepare_destination, restore_like, write_step0
from mtvjax.checkpoint.manager import config_to_json, read_config
from mtvjax.checkpoint.conversion import (AS_IS, ConversionError, Entry, Rule, TensorSource,
                                      check_layout, fill_targets)
from mtvjax.models.vae.cogvideox import model as vc

RULES = {
    "as_is": AS_IS,
    "conv3d": Rule(lambda a, t: a.transpose(2, 3, 4, 1, 0),
                   lambda t: [(t[4], t[3], t[0], t[1], t[2])]),
    "conv2d": Rule(lambda a, t: a.transpose(2, 3, 1, 0), lambda t: [(t[3], t[2], t[0], t[1])]),
}
# diffusers config.json field → VAE field (values compared / taken as they are)
DIFFUSERS_FIELDS = ("in_channels", "out_channels", "latent_channels", "block_out_channels",
                    "layers_per_block", "norm_num_groups", "norm_eps", "act_fn",
                    "temporal_compression_ratio", "scaling_factor", "shift_factor",
                    "sample_height", "sample_width", "use_quant_conv", "use_post_quant_conv")
BLOCK_TYPES = {"down_block_types": "CogVideoXDownBlock3D", "up_block_types": "CogVideoXUpBlock3D"}


def _conv(src: str, dst: tuple, rule: str = "conv3d", inner: bool = True) -> list[Entry]:
    w = f"{src}.conv" if inner else src
    return [Entry(f"{w}.weight", dst + ("kernel",), rule), Entry(f"{w}.bias", dst + ("bias",),
                                                                  "as_is")]


def _norm(src: str, dst: tuple) -> list[Entry]:
    return [Entry(f"{src}.weight", dst + ("scale",), "as_is"),
            Entry(f"{src}.bias", dst + ("bias",), "as_is")]


def _spatial_norm(src: str, dst: tuple) -> list[Entry]:
    return (_norm(f"{src}.norm_layer", dst + ("norm_layer",))
            + _conv(f"{src}.conv_y", dst + ("conv_y",)) + _conv(f"{src}.conv_b", dst + ("conv_b",)))


def _resnet(src: str, dst: tuple, c_in: int, c_out: int, spatial: bool) -> list[Entry]:
    norm = _spatial_norm if spatial else _norm
    out = norm(f"{src}.norm1", dst + ("norm1",)) + norm(f"{src}.norm2", dst + ("norm2",))
    out += _conv(f"{src}.conv1", dst + ("conv1",)) + _conv(f"{src}.conv2", dst + ("conv2",))
    if c_in != c_out:
        out += _conv(f"{src}.conv_shortcut", dst + ("conv_shortcut",), inner=False)
    return out


def _block(src, dst, c_in, c_out, layers, spatial, resample=None) -> list[Entry]:
    out = []
    for j in range(layers):
        out += _resnet(f"{src}.resnets.{j}", dst + (f"resnets_{j}",), c_in if j == 0 else c_out,
                       c_out, spatial)
    if resample:
        out += _conv(f"{src}.{resample}.0", dst + (f"{resample}_0",), "conv2d")
    return out


def name_table(config) -> list[Entry]:
    """Source key → Flax target for a VAE config (fields of `cogvideox_vae_presets()`)."""
    chans, layers = tuple(config.block_out_channels), config.layers_per_block
    n = len(chans)
    t = _conv("encoder.conv_in", ("encoder", "conv_in"))
    for i, ch in enumerate(chans):
        t += _block(f"encoder.down_blocks.{i}", ("encoder", f"down_blocks_{i}"),
                    chans[max(i - 1, 0)], ch, layers, False, "downsamplers" if i < n - 1 else None)
    t += _block("encoder.mid_block", ("encoder", "mid_block"), chans[-1], chans[-1], 2, False)
    t += _norm("encoder.norm_out", ("encoder", "norm_out"))
    t += _conv("encoder.conv_out", ("encoder", "conv_out"))
    rev = chans[::-1]
    t += _conv("decoder.conv_in", ("decoder", "conv_in"))
    t += _block("decoder.mid_block", ("decoder", "mid_block"), rev[0], rev[0], 2, True)
    for i, ch in enumerate(rev):
        t += _block(f"decoder.up_blocks.{i}", ("decoder", f"up_blocks_{i}"), rev[max(i - 1, 0)],
                    ch, layers + 1, True, "upsamplers" if i < n - 1 else None)
    t += _spatial_norm("decoder.norm_out", ("decoder", "norm_out"))
    t += _conv("decoder.conv_out", ("decoder", "conv_out"))
    return t


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def infer_fields(shapes: dict) -> dict:
    """VAE fields readable from `{key: shape}` (those present)."""
    found = {}
    if "encoder.conv_in.conv.weight" in shapes:
        found["in_channels"] = int(shapes["encoder.conv_in.conv.weight"][1])
    if "encoder.conv_out.conv.weight" in shapes:
        found["latent_channels"] = int(shapes["encoder.conv_out.conv.weight"][0]) // 2
    if "decoder.conv_out.conv.weight" in shapes:
        found["out_channels"] = int(shapes["decoder.conv_out.conv.weight"][0])
    chans, i = [], 0
    while f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight" in shapes:
        chans.append(int(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight"][0]))
        i += 1
    if chans:
        found["block_out_channels"] = tuple(chans)
        j = 0
        while f"encoder.down_blocks.0.resnets.{j}.conv1.conv.weight" in shapes:
            j += 1
        found["layers_per_block"] = j
    return found


def diffusers_config_path(src) -> Path | None:
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    path = folder / "config.json"
    return path if path.is_file() else None


def fields_from_diffusers(config: dict, where) -> dict:
    """VAE fields of a diffusers `AutoencoderKLCogVideoX` config.json."""
    if config.get("_class_name", "AutoencoderKLCogVideoX") != "AutoencoderKLCogVideoX":
        raise ConversionError(where, f"config.json is for {config['_class_name']}, not "
                              "AutoencoderKLCogVideoX")
    problems = [f"{k}: {v}" for k, want in BLOCK_TYPES.items()
                for v in config.get(k, ()) if v != want]
    problems += [f"{k}: {config[k]}" for k in ("latents_mean", "latents_std")
                 if config.get(k) is not None]
    if config.get("use_quant_conv") or config.get("use_post_quant_conv"):
        problems.append("quant / post-quant convs")
    if problems:
        raise ConversionError(where, "unsupported config.json settings: " + "; ".join(problems))
    out = {k: config[k] for k in DIFFUSERS_FIELDS if k in config}
    if out.get("shift_factor") is None:
        out["shift_factor"] = 0.0
    if "block_out_channels" in out:
        out["block_out_channels"] = tuple(out["block_out_channels"])
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return tuple(a) == tuple(b)
    if isinstance(a, float) or isinstance(b, float):
        return bool(np.isclose(float(a), float(b), rtol=1e-7, atol=0))
    return a == b


def resolve_config(shapes: dict, variant, src) -> ml_collections.ConfigDict:
    """`{"variant", "vae"}` checked against the tensors and any config.json (module docstring)."""
    inferred = infer_fields(shapes)
    path = diffusers_config_path(src)
    from_json = fields_from_diffusers(json.loads(path.read_text()), path) if path else {}
    if variant is None:
        name = "config.json" if from_json else "cogvideox-5b"
        fields = vc.get_config("cogvideox-5b").to_dict()
        fields.update(from_json or inferred)
    else:
        name = variant if isinstance(variant, str) else "given config"
        try:
            fields = (vc.get_config(variant) if isinstance(variant, str)
                      else vc.get_config("cogvideox-5b", **dict(variant))).to_dict()
        except ValueError as e:
            raise ConversionError(src, str(e)) from e
        disagree = [f"{k}: config.json {v}, variant {fields[k]}" for k, v in from_json.items()
                    if not _same(v, fields[k])]
        if disagree:
            raise ConversionError(src, f"config.json disagrees with variant {name!r}: "
                                  + "; ".join(disagree))
    disagree = [f"{k}: file {v}, config {fields[k]}" for k, v in inferred.items()
                if not _same(v, fields[k])]
    if disagree:
        raise ConversionError(src, f"shapes disagree with variant {name!r}: " + "; ".join(disagree))
    fields["block_out_channels"] = tuple(fields["block_out_channels"])
    return ml_collections.ConfigDict({"variant": name, "vae": fields})


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def _weights_location(src) -> Path:
    src = Path(src)
    if src.is_dir() and not any(src.glob("*.safetensors*")) and (src / "vae").is_dir():
        return src / "vae"                      # a diffusers pipeline folder
    return src


def target_shapes(vae: vc.CogVideoXVAE) -> dict:
    flat = traverse_util.flatten_dict(vae.abstract_params())
    return {k: tuple(v.shape) for k, v in flat.items()}


def load_params(src, variant="cogvideox-5b"):
    """(config, numpy params tree, summary) of `src`; writes nothing."""
    src = _weights_location(src)
    with TensorSource.open(src) as source:
        config = resolve_config(source.shapes, variant, src)
        vae = vc.CogVideoXVAE(config.vae)
        targets = target_shapes(vae)
        table = name_table(config.vae)
        check_layout(source.shapes, targets, table, RULES, src, what="the CogVideoX VAE")
        arrays = fill_targets(source.get, targets, table, RULES)
        num_tensors = len(source.shapes)
    summary = {"src": str(src), "variant": config.variant, "tensors": num_tensors,
               "params": int(sum(a.size for a in arrays.values())),
               "scaling_factor": config.vae.scaling_factor}
    return config, traverse_util.unflatten_dict(arrays), summary


def convert_vae_cogvideox(src, dst, variant="cogvideox-5b") -> dict:
    """Converts `src` (module docstring) into an Orbax checkpoint (step 0) under `dst`:
    `{"params": {"encoder", "decoder"}}` plus the config JSON. Returns a summary dict."""
    dst = prepare_destination(dst)
    config, params, summary = load_params(src, variant)
    write_step0(dst, params, config_to_json(config))
    return {**summary, "dst": dst, "step": 0}


def restore_vae_cogvideox(directory, step: int | None = None, **vae_kwargs):
    """(config, CogVideoXVAE, params) of a converted checkpoint; params as jax arrays.
    `vae_kwargs` (dtype, precision, compiler_options) go to `CogVideoXVAE`."""
    directory = os.fspath(directory)
    config_json, step = read_config(directory, step)
    config = ml_collections.ConfigDict(config_json)
    vae = vc.CogVideoXVAE(config.vae, **vae_kwargs)
    return config, vae, restore_like(directory, vae.abstract_params(), step)
