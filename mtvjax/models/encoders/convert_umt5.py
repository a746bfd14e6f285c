"""Converts the umT5 text encoder of MV-DiT-17B (`mtvjax.models.encoders.umt5`) into an
mtvjax Orbax checkpoint: `convert_umt5(src, dst, variant)` (the shared flow, source formats and
checks: `mtvjax.models.encoders.convert_common`). Layouts, told apart by their keys:

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

The checkpoint (step 0) holds `{"params": ...}` and `{"family", "variant", "model": fields,
"conversion": report}`.
"""
from __future__ import annotations

import functools

import numpy as np

from mtvjax.checkpoint.conversion import ConversionError, Entry, folder_config
from mtvjax.checkpoint.converted import save_converted
from mtvjax.models.encoders import umt5 as T
from mtvjax.models.encoders.convert_common import (Plan, convert_weights, layer_indices,
                                                   resolve_config, without)

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
        layers = layer_indices(shapes, r"blocks\.(\d+)\.")
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
        layers = layer_indices(shapes, r"encoder\.block\.(\d+)\.")
    try:
        fields.update(vocab_size=shapes[emb][0], dim=shapes[emb][1],
                      num_buckets=shapes[bias][0], num_heads=shapes[bias][1],
                      head_dim=shapes[q][0] // shapes[bias][1], ffn_dim=shapes[ffn][0],
                      num_layers=len(layers))
    except (KeyError, IndexError) as e:
        raise ConversionError("umT5", f"cannot read the sizes: key {e} missing") from None
    return {k: int(v) if isinstance(v, (np.integer,)) else v for k, v in fields.items()}


def _plan(variant, source, path) -> Plan:
    naming = umt5_naming(source.keys())
    skip, embedding = _umt5_skip(naming, source.keys())
    source, skipped = without(source, skip)
    config, name = resolve_config(
        path, variant, T.umt5_config, T.umt5_presets()["umt5-xxl"],
        lambda: infer_umt5_fields(source.shapes, naming, folder_config(path)))
    return Plan(source, naming, config, name, umt5_table(config, naming, embedding), skipped)


def convert_umt5_state_dict(src, variant="umt5-xxl") -> tuple[T.UMT5Config, dict, dict]:
    """In memory: (config, float32 params, report) from a file or folder."""
    return convert_weights(src, T.param_shapes, "the umT5 encoder",
                           functools.partial(_plan, variant))


def convert_umt5(src, dst, variant="umt5-xxl") -> dict:
    """Converts umT5 encoder weights at `src` (transformers or Wan naming) into an Orbax
    checkpoint (step 0) under `dst` (absent or empty). Returns a summary dict."""
    config, params, report = convert_umt5_state_dict(src, variant)
    return save_converted(dst, T.FAMILY, config, params, report)
