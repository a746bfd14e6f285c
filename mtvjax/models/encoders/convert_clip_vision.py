"""Converts the CLIP ViT-H/14 vision tower of MV-DiT-17B (`mtvjax.models.encoders.clip_vision`)
into an mtvjax Orbax checkpoint: `convert_clip_vision(src, dst, variant)` (the shared flow,
source formats and checks: `mtvjax.models.encoders.convert_common`). Layouts, told apart by
their keys:

* transformers (`CLIPVisionModel`, `CLIPVisionModelWithProjection` or a full `CLIPModel`):
  `vision_model.embeddings.{patch_embedding.weight,class_embedding,position_embedding.weight}`,
  `vision_model.pre_layrnorm`, `vision_model.encoder.layers.N.{layer_norm1,self_attn.{q,k,v,
  out}_proj,layer_norm2,mlp.fc1,mlp.fc2}`;
* original Wan (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, `XLMRobertaCLIP`):
  `visual.{patch_embedding.weight,cls_embedding [1,1,D],pos_embedding [1,257,D],pre_norm}`,
  `visual.transformer.N.{norm1,attn.to_qkv (fused q|k|v rows),attn.proj,norm2,mlp.0,mlp.2}`;
* open_clip (`visual.conv1.weight`, `visual.class_embedding`, `visual.positional_embedding`,
  `visual.ln_pre`, `visual.transformer.resblocks.N.{ln_1,attn.in_proj_{weight,bias} (fused),
  attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}`).

Skipped (and reported): blocks at or after the config's `output_layer` (Wan uses 31 of 32), the
post-LN, the projection/head, the text tower (`text_model.*`, `textual.*`, open_clip's top-level
text keys), `logit_scale` / `log_scale`, `position_ids`. The checkpoint (step 0) holds
`{"params": ...}` and `{"family", "variant", "model": fields, "conversion": report}`.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from mtvjax.checkpoint.conversion import (ConversionError, Entry, TensorSource, folder_config,
                                          format_keys)
from mtvjax.checkpoint.converted import save_converted
from mtvjax.models.encoders import clip_vision as C
from mtvjax.models.encoders.convert_common import (SPLIT, Plan, convert_weights, layer_indices,
                                                   resolve_config, split_fused, without)

CLIP_LAYOUTS = {
    # naming: (marker key, layer-key regex, fused-qkv predicate)
    "transformers": ("vision_model.embeddings.patch_embedding.weight",
                     r"vision_model\.encoder\.layers\.(\d+)\.", None),
    "wan": ("visual.patch_embedding.weight", r"visual\.transformer\.(\d+)\.",
            re.compile(r"visual\.transformer\.\d+\.attn\.to_qkv\.(weight|bias)$")),
    "open_clip": ("visual.conv1.weight", r"visual\.transformer\.resblocks\.(\d+)\.",
                  re.compile(r"visual\.transformer\.resblocks\.\d+\.attn\.in_proj_(weight|bias)$")),
}


HF_VISION_PARTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")


def add_vision_model_prefix(source: TensorSource) -> TensorSource:
    """transformers 5 saves `CLIPVisionModel` without the `vision_model.` prefix that
    `CLIPVisionModelWithProjection` / `CLIPModel` (and 4.x files) have: add it back."""
    if "embeddings.patch_embedding.weight" not in source.shapes:
        return source
    names = {k: ("vision_model." + k if k.startswith(HF_VISION_PARTS) else k)
             for k in source.keys()}
    return source.renamed(names)


def clip_naming(keys, label="CLIP") -> str:
    keys = set(keys)
    for naming, (marker, _, _) in CLIP_LAYOUTS.items():
        if marker in keys:
            return naming
    raise ConversionError(label, "not a CLIP vision checkpoint: none of "
                          + format_keys(m for m, _, _ in CLIP_LAYOUTS.values()) + " found")


def _clip_layer_rows(naming: str, i: int) -> list[tuple]:
    """(source key, target sub-path under layers/, rule) of block i."""
    if naming == "transformers":
        b = f"vision_model.encoder.layers.{i}"
        names = {"norm1": f"{b}.layer_norm1", "norm2": f"{b}.layer_norm2",
                 "q": f"{b}.self_attn.q_proj", "k": f"{b}.self_attn.k_proj",
                 "v": f"{b}.self_attn.v_proj", "o": f"{b}.self_attn.out_proj",
                 "fc1": f"{b}.mlp.fc1", "fc2": f"{b}.mlp.fc2"}
        weights = {p: (f"{n}.weight", f"{n}.bias") for p, n in names.items()}
    elif naming == "wan":
        b = f"visual.transformer.{i}"
        qkv = f"{b}.attn.to_qkv"
        weights = {"norm1": (f"{b}.norm1.weight", f"{b}.norm1.bias"),
                   "norm2": (f"{b}.norm2.weight", f"{b}.norm2.bias"),
                   **{p: (f"{qkv}.weight" + SPLIT.format(p), f"{qkv}.bias" + SPLIT.format(p))
                      for p in "qkv"},
                   "o": (f"{b}.attn.proj.weight", f"{b}.attn.proj.bias"),
                   "fc1": (f"{b}.mlp.0.weight", f"{b}.mlp.0.bias"),
                   "fc2": (f"{b}.mlp.2.weight", f"{b}.mlp.2.bias")}
    else:
        b = f"visual.transformer.resblocks.{i}"
        weights = {"norm1": (f"{b}.ln_1.weight", f"{b}.ln_1.bias"),
                   "norm2": (f"{b}.ln_2.weight", f"{b}.ln_2.bias"),
                   **{p: (f"{b}.attn.in_proj_weight" + SPLIT.format(p),
                          f"{b}.attn.in_proj_bias" + SPLIT.format(p)) for p in "qkv"},
                   "o": (f"{b}.attn.out_proj.weight", f"{b}.attn.out_proj.bias"),
                   "fc1": (f"{b}.mlp.c_fc.weight", f"{b}.mlp.c_fc.bias"),
                   "fc2": (f"{b}.mlp.c_proj.weight", f"{b}.mlp.c_proj.bias")}
    rows = []
    for part, (w, bias) in weights.items():
        if part.startswith("norm"):
            rows += [(w, (part, "scale"), "as_is"), (bias, (part, "bias"), "as_is")]
        else:
            rows += [(w, (part, "kernel"), "linear"), (bias, (part, "bias"), "as_is")]
    return rows


def clip_table(config: C.CLIPVisionConfig, naming: str) -> list[Entry]:
    """`conversion.Entry` list for naming "transformers", "wan" or "open_clip" (fused q|k|v under
    their `KEY[q]` / `KEY[k]` / `KEY[v]` views)."""
    embed = {
        "transformers": [("vision_model.embeddings.patch_embedding.weight", "conv2d"),
                         ("vision_model.embeddings.class_embedding", "as_is"),
                         ("vision_model.embeddings.position_embedding.weight", "as_is"),
                         ("vision_model.pre_layrnorm.weight", "as_is"),
                         ("vision_model.pre_layrnorm.bias", "as_is")],
        "wan": [("visual.patch_embedding.weight", "conv2d"), ("visual.cls_embedding", "squeeze"),
                ("visual.pos_embedding", "squeeze"), ("visual.pre_norm.weight", "as_is"),
                ("visual.pre_norm.bias", "as_is")],
        "open_clip": [("visual.conv1.weight", "conv2d"), ("visual.class_embedding", "as_is"),
                      ("visual.positional_embedding", "as_is"), ("visual.ln_pre.weight", "as_is"),
                      ("visual.ln_pre.bias", "as_is")],
    }[naming]
    paths = [("patch_embedding", "kernel"), ("class_embedding",), ("position_embedding",),
             ("pre_norm", "scale"), ("pre_norm", "bias")]
    rows = [Entry(src, dst, rule) for (src, rule), dst in zip(embed, paths)]
    for i in range(config.output_layer):
        rows += [Entry(src, ("layers",) + sub, rule, i)
                 for src, sub, rule in _clip_layer_rows(naming, i)]
    return rows


def _clip_skip(naming: str, output_layer: int):
    """Predicate of the keys the vision tower (up to `output_layer`) does not use."""
    layer = re.compile(CLIP_LAYOUTS[naming][1])

    def late(k):
        m = layer.match(k)
        return m is not None and int(m.group(1)) >= output_layer

    if naming == "transformers":
        return lambda k: (late(k) or not k.startswith("vision_model.")
                          or k.startswith("vision_model.post_layernorm.")
                          or k == "vision_model.embeddings.position_ids")
    if naming == "wan":
        return lambda k: (late(k) or not k.startswith("visual.")
                          or k.startswith("visual.post_norm.") or k == "visual.head"
                          or k.startswith("visual.head."))
    return lambda k: (late(k) or not k.startswith("visual.") or k.startswith("visual.ln_post.")
                      or k == "visual.proj")


def infer_clip_fields(shapes: dict, naming: str, config_json: dict | None = None) -> dict:
    """Sizes readable from the shapes; heads and activation only from a transformers
    config.json (else the ViT-H/14 preset's: head_dim 80, exact GELU)."""
    fields = {}
    if config_json and ("vision_config" in config_json or "num_hidden_layers" in config_json):
        fields.update(C.config_from_transformers(config_json).to_fields())
    patch = CLIP_LAYOUTS[naming][0]
    pos = {"transformers": "vision_model.embeddings.position_embedding.weight",
           "wan": "visual.pos_embedding", "open_clip": "visual.positional_embedding"}[naming]
    layers = layer_indices(shapes, CLIP_LAYOUTS[naming][1])
    try:
        width, channels, p, _ = shapes[patch]
        tokens = shapes[pos][-2]
    except (KeyError, ValueError) as e:
        raise ConversionError("CLIP", f"cannot read the sizes: {e}") from None
    grid = int(round((tokens - 1) ** 0.5))
    fields.update(width=width, channels=channels, patch_size=p, image_size=grid * p,
                  num_layers=len(layers))
    if "num_heads" not in fields:
        fields["num_heads"] = max(1, width // 80)
    fc1 = [k for k in shapes if re.search(r"\.(mlp\.fc1|mlp\.0|mlp\.c_fc)\.weight$", k)]
    if fc1:
        fields["mlp_dim"] = shapes[fc1[0]][0]
    fields.setdefault("output_layer", max(0, len(layers) - 1))
    return {k: int(v) if isinstance(v, np.integer) else v for k, v in fields.items()}


def _plan(variant, source, path) -> Plan:
    naming = clip_naming(source.keys(), path)
    layers = layer_indices(source.keys(), CLIP_LAYOUTS[naming][1])
    config, name = resolve_config(
        path, variant, C.clip_vision_config, C.clip_vision_presets()["clip-vit-h-14"],
        lambda: infer_clip_fields(source.shapes, naming, folder_config(path)))
    if len(layers) != config.num_layers or layers != list(range(len(layers))):
        raise ConversionError(path, f"the file has {len(layers)} blocks "
                              f"({format_keys(map(str, layers), 4)}); the config "
                              f"{name!r} has num_layers={config.num_layers}")
    source, skipped = without(source, _clip_skip(naming, config.output_layer))
    fused = CLIP_LAYOUTS[naming][2]
    if fused is not None:
        source = split_fused(source, lambda k: fused.match(k) is not None)
    return Plan(source, naming, config, name, clip_table(config, naming), skipped)


def convert_clip_state_dict(src, variant="clip-vit-h-14"
                            ) -> tuple[C.CLIPVisionConfig, dict, dict]:
    """In memory: (config, float32 params, report) from a file or folder."""
    return convert_weights(src, C.param_shapes, "the CLIP vision tower",
                           functools.partial(_plan, variant), prepare=add_vision_model_prefix)


def convert_clip_vision(src, dst, variant="clip-vit-h-14") -> dict:
    """Converts CLIP vision weights at `src` (transformers, Wan or open_clip naming) into an
    Orbax checkpoint (step 0) under `dst`. Returns a summary dict."""
    config, params, report = convert_clip_state_dict(src, variant)
    return save_converted(dst, C.FAMILY, config, params, report)
