"""Converts Wan 2.1 VAE weights (diffusers `AutoencoderKLWan` or the original `Wan2.1_VAE.pth`)
into an mtvjax Orbax checkpoint for `mtvjax.models.vae.wan.model`.

Sources: a diffusers VAE folder (`config.json` + `diffusion_pytorch_model.safetensors` / `.bin`),
a diffusers pipeline folder (its `vae/`), a `.safetensors` file, or a torch file (`.pth` / `.pt` /
`.bin`, read with `torch.load(weights_only=True)`, memory-mapped). Both namings are accepted and
told apart by their keys:

* diffusers: `encoder.conv_in`, `encoder.down_blocks.K.{norm1,conv1,norm2,conv2,conv_shortcut}`,
  `...resample.1`, `...time_conv`, `*.mid_block.{resnets.0,attentions.0,resnets.1}`,
  `*.norm_out`, `*.conv_out`, `quant_conv`, `post_quant_conv`,
  `decoder.up_blocks.I.{resnets.J,upsamplers.0}`;
* original Wan (`WanVAE_`): `encoder.conv1`, `encoder.downsamples.K.residual.{0,2,3,6}` /
  `.shortcut`, `*.middle.{0,1,2}`, `*.head.{0,2}`, `conv1` / `conv2` (quant / post-quant),
  `decoder.upsamples.N` with the decoder's residual blocks and upsamplers numbered in one flat
  sequence. A `model.` or `vae.` prefix on every key (MTVCrafter's loader adds `model.`) is
  dropped.

The name table is generated from the config (`name_table`); layouts change by the shape rules in
`RULES` (conv weights OI(T)HW → (T)HWIO, 1×1 attention convs → dense [in, out], RMS gammas
[C, 1, 1(, 1)] → [C]). `conversion.check_layout` requires every source key and every parameter to be
used exactly once with matching shapes, or raises one `ConversionError` naming the keys. The
checkpoint (step 0) holds `{"params": ...}` and a config JSON `{"family": "wan_vae", "variant",
"model": fields, "conversion": report}`; `load_converted` reads it back.

The config (`variant`): a preset of `vae_wan.wan_vae_presets()`, a fields dict, a `WanVAEConfig`,
or None to read a diffusers `config.json` next to the weights (the latent mean/std are not in the
weights). When both are given and differ, the conversion is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import traverse_util

from mtvjax.checkpoint.converted import save_converted
from mtvjax.checkpoint.manager import Checkpointer, abstract_like, read_config
from mtvjax.checkpoint.conversion import (AS_IS, ConversionError, Entry, Rule, TensorSource,
                                          check_layout, fill_targets, format_keys, strip_prefix)
from mtvjax.models.vae.wan import model as V

RULES = {
    "as_is": AS_IS,
    # CausalConv3d / Conv3d [out, in, t, h, w] -> [t, h, w, in, out]
    "conv3d": Rule(lambda a, t: a.transpose(2, 3, 4, 1, 0),
                   lambda t: [(t[4], t[3], t[0], t[1], t[2])]),
    # Conv2d [out, in, h, w] -> [h, w, in, out]
    "conv2d": Rule(lambda a, t: a.transpose(2, 3, 1, 0), lambda t: [(t[3], t[2], t[0], t[1])]),
    # 1x1 Conv2d [out, in, 1, 1] -> dense [in, out]
    "conv1x1": Rule(lambda a, t: a[:, :, 0, 0].T, lambda t: [(t[1], t[0], 1, 1)]),
    # WanRMS_norm gamma [C, 1, 1, 1] (images=False) / [C, 1, 1] (images=True) -> [C]
    "gamma3d": Rule(lambda a, t: a.reshape(t), lambda t: [(t[0], 1, 1, 1)]),
    "gamma2d": Rule(lambda a, t: a.reshape(t), lambda t: [(t[0], 1, 1)]),
}
PREFIXES = ("model.", "vae.")
WAN_MARKERS = ("encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight")


# ----------------------------------------------------------------------------------------------
# Name table
# ----------------------------------------------------------------------------------------------


def _conv(d, w, t, rule="conv3d"):
    return [(f"{d}.weight", f"{w}.weight", t + ("kernel",), rule),
            (f"{d}.bias", f"{w}.bias", t + ("bias",), "as_is")]


def _res(d, w, t, cin, cout):
    rows = [(f"{d}.norm1.gamma", f"{w}.residual.0.gamma", t + ("norm1", "gamma"), "gamma3d"),
            *_conv(f"{d}.conv1", f"{w}.residual.2", t + ("conv1",)),
            (f"{d}.norm2.gamma", f"{w}.residual.3.gamma", t + ("norm2", "gamma"), "gamma3d"),
            *_conv(f"{d}.conv2", f"{w}.residual.6", t + ("conv2",))]
    if cin != cout:
        rows += _conv(f"{d}.conv_shortcut", f"{w}.shortcut", t + ("conv_shortcut",))
    return rows


def _mid(d, w, t, dim):
    attn_d, attn_w, attn_t = f"{d}.attentions.0", f"{w}.1", t + ("attentions_0",)
    return [*_res(f"{d}.resnets.0", f"{w}.0", t + ("resnets_0",), dim, dim),
            (f"{attn_d}.norm.gamma", f"{attn_w}.norm.gamma", attn_t + ("norm", "gamma"),
             "gamma2d"),
            *_conv(f"{attn_d}.to_qkv", f"{attn_w}.to_qkv", attn_t + ("to_qkv",), "conv1x1"),
            *_conv(f"{attn_d}.proj", f"{attn_w}.proj", attn_t + ("proj",), "conv1x1"),
            *_res(f"{d}.resnets.1", f"{w}.2", t + ("resnets_1",), dim, dim)]


def _resample(d, w, t, mode):
    rows = _conv(f"{d}.resample.1", f"{w}.resample.1", t + ("resample",), "conv2d")
    if mode.endswith("3d"):
        rows += _conv(f"{d}.time_conv", f"{w}.time_conv", t + ("time_conv",))
    return rows


def name_rows(config: V.WanVAEConfig) -> list[tuple]:
    """(diffusers key, original Wan key, target path, rule) for every parameter."""
    rows = []
    enc, dec = ("encoder",), ("decoder",)
    rows += _conv("encoder.conv_in", "encoder.conv1", enc + ("conv_in",))
    for k, (name, kind, cin, cout, mode) in enumerate(config.encoder_layers()):
        d, w, t = f"encoder.down_blocks.{k}", f"encoder.downsamples.{k}", enc + (name,)
        rows += _res(d, w, t, cin, cout) if kind == "res" else _resample(d, w, t, mode)
    top = config.base_dim * config.dim_mult[-1]
    rows += _mid("encoder.mid_block", "encoder.middle", enc + ("mid_block",), top)
    rows += [("encoder.norm_out.gamma", "encoder.head.0.gamma", enc + ("norm_out", "gamma"),
              "gamma3d"), *_conv("encoder.conv_out", "encoder.head.2", enc + ("conv_out",))]
    rows += _conv("quant_conv", "conv1", ("quant_conv",))
    rows += _conv("post_quant_conv", "conv2", ("post_quant_conv",))
    levels = config.decoder_levels()
    rows += _conv("decoder.conv_in", "decoder.conv1", dec + ("conv_in",))
    rows += _mid("decoder.mid_block", "decoder.middle", dec + ("mid_block",), levels[0][1])
    flat = 0
    for i, (name, cin, cout, num_res, mode) in enumerate(levels):
        for j in range(num_res):
            rows += _res(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.upsamples.{flat}",
                         dec + (name, f"resnets_{j}"), cin if j == 0 else cout, cout)
            flat += 1
        if mode is not None:
            rows += _resample(f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.upsamples.{flat}",
                              dec + (name, "upsampler"), mode)
            flat += 1
    rows += [("decoder.norm_out.gamma", "decoder.head.0.gamma", dec + ("norm_out", "gamma"),
              "gamma3d"), *_conv("decoder.conv_out", "decoder.head.2", dec + ("conv_out",))]
    return rows


def name_table(config: V.WanVAEConfig, naming: str = "diffusers") -> list[Entry]:
    """`conversion.Entry` list for `naming` "diffusers" or "wan"."""
    column = {"diffusers": 0, "wan": 1}[naming]
    return [Entry(row[column], row[2], row[3]) for row in name_rows(config)]


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def _weights_folder(path: Path) -> Path:
    """A diffusers pipeline folder's `vae/` when the folder itself has no weight file."""
    if path.is_dir() and (path / "vae").is_dir() and not any(
            path.glob("*.safetensors")) and not any(
            p for s in (".bin", ".pt", ".pth") for p in path.glob(f"*{s}")):
        return path / "vae"
    return path


def open_source(path) -> tuple[TensorSource, str, Path]:
    """(source with any `model.` / `vae.` prefix dropped, naming "diffusers" | "wan", the folder
    or file the weights were read from)."""
    path = _weights_folder(Path(path))
    source = strip_prefix(TensorSource.open(path), PREFIXES)
    naming = "wan" if any(m in source.shapes for m in WAN_MARKERS) else "diffusers"
    return source, naming, path


def folder_config(path: Path) -> dict | None:
    """The diffusers `config.json` next to the weights (or in the folder), if any."""
    folder = path if path.is_dir() else path.parent
    file = folder / "config.json"
    if not file.is_file():
        return None
    config = json.loads(file.read_text())
    cls = config.get("_class_name")
    if cls not in (None, "AutoencoderKLWan"):
        raise ConversionError(file, f"config of a {cls}, not an AutoencoderKLWan")
    return config


def resolve_config(variant, config_json: dict | None, label) -> tuple[V.WanVAEConfig, str]:
    """(config, variant name) from `variant` and/or the folder's config.json."""
    try:
        from_file = None if config_json is None else V.config_from_diffusers(config_json)
        if variant is None:
            if from_file is None:
                raise ConversionError(label, "no config.json next to the weights: pass variant "
                                      f"(one of {sorted(V.wan_vae_presets())} or fields)")
            return from_file, "config.json"
        config = V.wan_vae_config(variant)
    except ValueError as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(label, str(e)) from e
    if from_file is not None:
        differ = [k for k in V.DIFFUSERS_FIELDS
                  if getattr(from_file, k) != getattr(config, k)
                  and not (k == "decoder_base_dim" and from_file.decoder_dim == config.decoder_dim)]
        if differ:
            raise ConversionError(label, f"variant {variant!r} differs from config.json in "
                                  f"{format_keys(differ)}; pass variant=None to use the file")
    return config, variant if isinstance(variant, str) else "custom"


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def convert_source(source: TensorSource, config: V.WanVAEConfig, naming: str = "diffusers",
                   label=None) -> dict:
    """Nested float32 numpy params of `source` (checked by `conversion.check_layout`)."""
    label = source.path if label is None else label
    table = name_table(config, naming)
    targets = {p: tuple(s.shape) for p, s in
               traverse_util.flatten_dict(V.param_shapes(config)).items()}
    check_layout(source.shapes, targets, table, RULES, label,
                 what=f"the Wan VAE ({naming} naming)")
    return traverse_util.unflatten_dict(fill_targets(source.get, targets, table, RULES))


def convert_state_dict(src, variant="wan2.1") -> tuple[V.WanVAEConfig, dict, dict]:
    """In memory: (config, params, report) from a folder or file."""
    source, naming, path = open_source(src)
    try:
        config, name = resolve_config(variant, folder_config(path), path)
        params = convert_source(source, config, naming, path)
        report = {"src": str(src), "naming": naming, "variant": name,
                  "tensors": len(source.shapes), "params": V.count_params(params)}
    finally:
        source.close()
    return config, params, report


def convert_vae_wan(src, dst, variant="wan2.1") -> dict:
    """Converts the Wan 2.1 VAE at `src` into an Orbax checkpoint (step 0) under `dst` (must be
    absent or an empty folder). Returns a summary dict."""
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"{os.path.abspath(dst)}: destination exists and is not an empty "
                              "folder")
    config, params, report = convert_state_dict(src, variant)
    return save_converted(dst, V.FAMILY, config, params, report)


def load_converted(directory, step: int | None = None) -> tuple[V.WanVAEConfig, dict]:
    """(config, float32 params) of a checkpoint written by `convert_vae_wan`."""
    directory = str(directory)
    config_json, step = read_config(directory, step)
    if config_json.get("family") != V.FAMILY:
        raise ValueError(f"{directory}: not a Wan VAE checkpoint "
                         f"(family {config_json.get('family')!r})")
    config = V.wan_vae_config(config_json["model"])
    abstract = {"params": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32),
                                       V.param_shapes(config))}
    checkpointer = Checkpointer(directory, keep=None, create=False)
    state = checkpointer.restore(step, abstract_like(abstract))
    checkpointer.close()
    return config, state["params"]
