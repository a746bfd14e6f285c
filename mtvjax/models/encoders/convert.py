"""Converts the MV-DiT-17B condition encoders into mtvjax Orbax checkpoints: the umT5 text
encoder (`mtvjax.models.encoders.umt5`) and the CLIP ViT-H/14 vision tower (`mtvjax.models.encoders.clip_vision`).

Sources are read through `conversion.TensorSource` (a `.safetensors` file, a sharded folder with its
index, or a torch file read with `torch.load(weights_only=True)`), and a prefix on every key
(`model.`, which MTVCrafter's loader adds; `text_encoder.`, `image_encoder.`, `module.`) is
dropped. Layouts, told apart by their keys:

**umT5** (`convert_umt5(src, dst, variant)`):
* transformers (`UMT5EncoderModel`, or a full `UMT5ForConditionalGeneration` whose `decoder.*` /
  `lm_head` are skipped): `shared.weight` / `encoder.embed_tokens.weight` (tied; the encoder's
  copy wins, the other is skipped), `encoder.block.N.layer.0.{layer_norm,SelfAttention.{q,k,v,o,
  relative_attention_bias}}`, `encoder.block.N.layer.1.{layer_norm,DenseReluDense.{wi_0,wi_1,
  wo}}`, `encoder.final_layer_norm.weight`;
* original Wan (`models_t5_umt5-xxl-enc-bf16.pth`, `T5Encoder` with shared_pos=False):
  `token_embedding.weight`, `blocks.N.{norm1,norm2}.weight`, `blocks.N.attn.{q,k,v,o}.weight`,
  `blocks.N.pos_embedding.embedding.weight`, `blocks.N.ffn.{gate.0,fc1,fc2}.weight`
  (gate.0 = wi_0 under the GELU, fc1 = wi_1, fc2 = wo), `norm.weight`. bf16 tensors become
  float32.

**CLIP vision** (`convert_clip_vision(src, dst, variant)`):
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
  Skipped (and reported): blocks at or after the config's `output_layer` (Wan uses 31 of 32),
  the post-LN, the projection/head, the text tower (`text_model.*`, `textual.*`, open_clip's
  top-level text keys), `logit_scale` / `log_scale`, `position_ids`.

Every other source tensor and every parameter is used exactly once with matching shapes, or one
`conversion.ConversionError` names the keys (unused, missing, shape mismatches). The checkpoint
(step 0) holds `{"params": ...}` and `{"family", "variant", "model": fields, "conversion":
report}`; the report has a `fingerprint` of the converted weights, and `checkpoint_id(dst)` (the
text cache's key) is derived from it. `variant`: a preset name, a fields dict, a config, or None
to read the sizes from the shapes (and a transformers `config.json` beside the weights).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.conversion import (AS_IS, LINEAR, ConversionError, Entry, Rule, TensorSource,
                                          check_layout, fill_targets, folder_config, format_keys,
                                          strip_prefix)
from mtvjax.checkpoint.converted import save_converted
from mtvjax.models.encoders import clip_vision as C
from mtvjax.models.encoders import umt5 as T

RULES = {
    "as_is": AS_IS,
    "linear": LINEAR,
    # Conv2d [out, in, h, w] -> [h, w, in, out]
    "conv2d": Rule(lambda a, t: a.transpose(2, 3, 1, 0), lambda t: [(t[3], t[2], t[0], t[1])]),
    # Wan's cls_embedding [1, 1, D] / pos_embedding [1, N, D] -> [D] / [N, D]
    "squeeze": Rule(lambda a, t: a.reshape(t), lambda t: [(1,) * (3 - len(t)) + tuple(t)]),
}
PREFIXES = ("model.", "text_encoder.", "image_encoder.", "module.")
SPLIT = "[{}]"          # virtual key of one third of a fused q|k|v tensor: KEY[q], KEY[k], KEY[v]
FINGERPRINT_SAMPLES = 65536


# ----------------------------------------------------------------------------------------------
# Source views: prefix, skipped keys, fused q|k|v split
# ----------------------------------------------------------------------------------------------


def without(source: TensorSource, skip) -> tuple[TensorSource, list[str]]:
    """(view without the keys `skip(key)` is true for, the skipped keys)."""
    skipped = sorted(k for k in source.keys() if skip(k))
    dropped = set(skipped)
    keep = [k for k in source.keys() if k not in dropped]
    return (source.view({k: source.shapes[k] for k in keep},
                        {k: (lambda k=k: source.get(k)) for k in keep}), skipped)


def split_fused(source: TensorSource, fused) -> TensorSource:
    """Fused q|k|v tensors (`fused(key)` true; rows [3·D, ...]) appear as `KEY[q]`, `KEY[k]`,
    `KEY[v]` of D rows each (q first, as `view(b, s, 3, n, d)` and open_clip split them)."""
    shapes, getters = {}, {}
    for key, shape in source.shapes.items():
        if not fused(key):
            shapes[key], getters[key] = shape, (lambda k=key: source.get(k))
            continue
        if not shape or shape[0] % 3:
            raise ConversionError(source.path, f"{key}: fused q/k/v tensor of shape {shape}, "
                                  "whose first axis is not a multiple of 3")
        rows = shape[0] // 3
        for i, part in enumerate("qkv"):
            name = key + SPLIT.format(part)
            shapes[name] = (rows,) + tuple(shape[1:])
            getters[name] = (lambda k=key, i=i, r=rows: source.get(k)[i * r:(i + 1) * r])
    return source.view(shapes, getters)


def _layer_indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _fingerprint(params: dict) -> str:
    """sha256 over every parameter's path, shape and (a strided sample of) its float32 values."""
    digest = hashlib.sha256()
    for path, value in sorted(traverse_util.flatten_dict(params).items()):
        arr = np.ascontiguousarray(np.asarray(value, np.float32)).ravel()
        step = max(1, arr.size // FINGERPRINT_SAMPLES)
        digest.update(f"{'/'.join(path)}:{list(np.shape(value))}\n".encode())
        digest.update(np.ascontiguousarray(arr[::step]).tobytes())
    return digest.hexdigest()


def _targets(shapes_tree) -> dict:
    return {p: tuple(s.shape) for p, s in traverse_util.flatten_dict(shapes_tree).items()}


# ----------------------------------------------------------------------------------------------
# umT5
# ----------------------------------------------------------------------------------------------

UMT5_WAN_MARKERS = ("token_embedding.weight", "blocks.0.attn.q.weight")


def umt5_naming(keys) -> str:
    keys = set(keys)
    if any(m in keys for m in UMT5_WAN_MARKERS):
        return "wan"
    return "transformers"


def umt5_table(config: T.UMT5Config, naming: str, embedding_key: str = "shared.weight"
               ) -> list[Entry]:
    """`conversion.Entry` list for naming "transformers" or "wan"."""
    L = ("layers",)
    rows = []
    if naming == "transformers":
        rows.append(Entry(embedding_key, ("token_embedding", "embedding"), "as_is"))
        for i in range(config.num_layers):
            b = f"encoder.block.{i}.layer"
            rows += [Entry(f"{b}.0.layer_norm.weight", L + ("norm1", "scale"), "as_is", i),
                     Entry(f"{b}.0.SelfAttention.relative_attention_bias.weight",
                           L + ("attn", "relative_attention_bias"), "as_is", i),
                     Entry(f"{b}.1.layer_norm.weight", L + ("norm2", "scale"), "as_is", i)]
            rows += [Entry(f"{b}.0.SelfAttention.{p}.weight", L + ("attn", p, "kernel"),
                           "linear", i) for p in "qkvo"]
            ffn = ("wi_0", "wi_1", "wo") if config.gated else ("wi", "wo")
            rows += [Entry(f"{b}.1.DenseReluDense.{p}.weight", L + ("ffn", p, "kernel"),
                           "linear", i) for p in ffn]
        rows.append(Entry("encoder.final_layer_norm.weight", ("final_norm", "scale"), "as_is"))
    elif naming == "wan":
        if not config.gated:
            raise ConversionError("umT5", "the Wan layout has a gated FFN; config.gated is False")
        rows.append(Entry("token_embedding.weight", ("token_embedding", "embedding"), "as_is"))
        for i in range(config.num_layers):
            b = f"blocks.{i}"
            rows += [Entry(f"{b}.norm1.weight", L + ("norm1", "scale"), "as_is", i),
                     Entry(f"{b}.pos_embedding.embedding.weight",
                           L + ("attn", "relative_attention_bias"), "as_is", i),
                     Entry(f"{b}.norm2.weight", L + ("norm2", "scale"), "as_is", i),
                     Entry(f"{b}.ffn.gate.0.weight", L + ("ffn", "wi_0", "kernel"), "linear", i),
                     Entry(f"{b}.ffn.fc1.weight", L + ("ffn", "wi_1", "kernel"), "linear", i),
                     Entry(f"{b}.ffn.fc2.weight", L + ("ffn", "wo", "kernel"), "linear", i)]
            rows += [Entry(f"{b}.attn.{p}.weight", L + ("attn", p, "kernel"), "linear", i)
                     for p in "qkvo"]
        rows.append(Entry("norm.weight", ("final_norm", "scale"), "as_is"))
    else:
        raise ValueError(f"unknown umT5 naming {naming!r}")
    return rows


def _umt5_skip(naming: str, keys) -> tuple:
    """(predicate of skipped keys, embedding key) for the source's naming."""
    keys = set(keys)
    if naming == "wan":
        return (lambda k: False), "token_embedding.weight"
    embedding = "encoder.embed_tokens.weight" if "encoder.embed_tokens.weight" in keys \
        else "shared.weight"

    def skip(k):
        return (k.startswith("decoder.") or k == "lm_head.weight"
                or (k == "shared.weight" and embedding != k))
    return skip, embedding


def infer_umt5_fields(shapes: dict, naming: str, config_json: dict | None = None) -> dict:
    """Model fields readable from the shapes (and a transformers config.json)."""
    fields = {}
    if config_json and "d_model" in config_json:
        fields.update(T.config_from_transformers(config_json).to_fields())
    if naming == "wan":
        emb, q, bias = "token_embedding.weight", "blocks.0.attn.q.weight", \
            "blocks.0.pos_embedding.embedding.weight"
        ffn = "blocks.0.ffn.fc1.weight"
        layers = _layer_indices(shapes, r"blocks\.(\d+)\.")
    else:
        emb = "encoder.embed_tokens.weight" if "encoder.embed_tokens.weight" in shapes \
            else "shared.weight"
        q = "encoder.block.0.layer.0.SelfAttention.q.weight"
        bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ffn = ("encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
               if "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
               else "encoder.block.0.layer.1.DenseReluDense.wi.weight")
        if ffn.endswith(".wi.weight") and ffn in shapes:
            fields["gated"] = False
        layers = _layer_indices(shapes, r"encoder\.block\.(\d+)\.")
    try:
        fields.update(vocab_size=shapes[emb][0], dim=shapes[emb][1],
                      num_buckets=shapes[bias][0], num_heads=shapes[bias][1],
                      head_dim=shapes[q][0] // shapes[bias][1], ffn_dim=shapes[ffn][0],
                      num_layers=len(layers))
    except (KeyError, IndexError) as e:
        raise ConversionError("umT5", f"cannot read the sizes: key {e} missing") from None
    return {k: int(v) if isinstance(v, (np.integer,)) else v for k, v in fields.items()}


def convert_umt5_state_dict(src, variant="umt5-xxl") -> tuple[T.UMT5Config, dict, dict]:
    """In memory: (config, float32 params, report) from a file or folder."""
    path = Path(src)
    source = strip_prefix(TensorSource.open(path), PREFIXES)
    try:
        naming = umt5_naming(source.keys())
        skip, embedding = _umt5_skip(naming, source.keys())
        source, skipped = without(source, skip)
        if variant is None:
            config = T.umt5_config({**T.umt5_presets()["umt5-xxl"],
                                    **infer_umt5_fields(source.shapes, naming,
                                                        folder_config(path))})
            name = "inferred"
        else:
            try:
                config = T.umt5_config(variant)
            except ValueError as e:
                raise ConversionError(path, str(e)) from e
            name = variant if isinstance(variant, str) else "custom"
        table = umt5_table(config, naming, embedding)
        targets = _targets(T.param_shapes(config))
        check_layout(source.shapes, targets, table, RULES, path,
                     what=f"the umT5 encoder ({naming} naming)",
                     stacked=lambda p: p[0] == "layers")
        params = traverse_util.unflatten_dict(fill_targets(source.get, targets, table, RULES))
        report = {"src": str(src), "naming": naming, "variant": name,
                  "tensors": len(source.shapes), "skipped": len(skipped),
                  "skipped_keys": format_keys(skipped, 8) if skipped else "",
                  "params": T.count_params(params), "fingerprint": _fingerprint(params)}
    finally:
        source.close()
    return config, params, report


# ----------------------------------------------------------------------------------------------
# CLIP vision
# ----------------------------------------------------------------------------------------------

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
    layers = _layer_indices(shapes, CLIP_LAYOUTS[naming][1])
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


def convert_clip_state_dict(src, variant="clip-vit-h-14"
                            ) -> tuple[C.CLIPVisionConfig, dict, dict]:
    """In memory: (config, float32 params, report) from a file or folder."""
    path = Path(src)
    source = add_vision_model_prefix(strip_prefix(TensorSource.open(path), PREFIXES))
    try:
        naming = clip_naming(source.keys(), path)
        layers = _layer_indices(source.keys(), CLIP_LAYOUTS[naming][1])
        if variant is None:
            config = C.clip_vision_config({**C.clip_vision_presets()["clip-vit-h-14"],
                                           **infer_clip_fields(source.shapes, naming,
                                                               folder_config(path))})
            name = "inferred"
        else:
            try:
                config = C.clip_vision_config(variant)
            except ValueError as e:
                raise ConversionError(path, str(e)) from e
            name = variant if isinstance(variant, str) else "custom"
        if len(layers) != config.num_layers or layers != list(range(len(layers))):
            raise ConversionError(path, f"the file has {len(layers)} blocks "
                                  f"({format_keys(map(str, layers), 4)}); the config "
                                  f"{name!r} has num_layers={config.num_layers}")
        source, skipped = without(source, _clip_skip(naming, config.output_layer))
        fused = CLIP_LAYOUTS[naming][2]
        if fused is not None:
            source = split_fused(source, lambda k: fused.match(k) is not None)
        table = clip_table(config, naming)
        targets = _targets(C.param_shapes(config))
        check_layout(source.shapes, targets, table, RULES, path,
                     what=f"the CLIP vision tower ({naming} naming)",
                     stacked=lambda p: p[0] == "layers")
        params = traverse_util.unflatten_dict(fill_targets(source.get, targets, table, RULES))
        report = {"src": str(src), "naming": naming, "variant": name,
                  "tensors": len(source.shapes), "skipped": len(skipped),
                  "skipped_keys": format_keys(skipped, 8) if skipped else "",
                  "params": C.count_params(params), "fingerprint": _fingerprint(params)}
    finally:
        source.close()
    return config, params, report


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def convert_umt5(src, dst, variant="umt5-xxl") -> dict:
    """Converts umT5 encoder weights at `src` (transformers or Wan naming) into an Orbax
    checkpoint (step 0) under `dst` (absent or empty). Returns a summary dict."""
    config, params, report = convert_umt5_state_dict(src, variant)
    return save_converted(dst, T.FAMILY, config, params, report)


def convert_clip_vision(src, dst, variant="clip-vit-h-14") -> dict:
    """Converts CLIP vision weights at `src` (transformers, Wan or open_clip naming) into an
    Orbax checkpoint (step 0) under `dst`. Returns a summary dict."""
    config, params, report = convert_clip_state_dict(src, variant)
    return save_converted(dst, C.FAMILY, config, params, report)
