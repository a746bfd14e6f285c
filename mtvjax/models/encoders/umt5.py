"""The umT5 text encoder of MV-DiT-17B (Wan-2.1's `umt5-xxl` encoder) in Flax linen.

Encoder only (docs/reference/mvdit17b.md §6.6): token embedding (no scaling) → `num_layers` pre-norm
blocks → final RMS norm. Each block:

* RMS norm (no mean subtraction, no bias, eps 1e-6, computed in float32);
* self-attention without biases and **without 1/√d scaling**, plus a relative-position bias of
  the block's **own** table `[num_buckets, num_heads]` (umT5: every layer has one; T5 shares the
  first layer's); bidirectional buckets (half per direction, exact below `num_buckets/4`,
  logarithmic up to `max_distance`), computed exactly as torch does them; padding keys masked;
* RMS norm → gated FFN `wo(act(wi_0 x) · wi_1 x)` without biases (`gelu_new` = tanh GELU for
  umT5's "gated-gelu").

Layers run under `nn.scan` (parameters stacked on a leading layer axis, the relative-bias table
included, so each layer keeps its own). `dtype` is the compute dtype (bfloat16 like the released
pipeline's bf16 encoder, or float32); norms and softmax run in float32 either way.

Outputs: `UMT5Encoder(...)(ids, mask)` is the full `[B, L, dim]` last hidden state (padded rows
included, as `transformers.UMT5EncoderModel` gives it). `encode(params, ids, mask, config)`
returns what the Wan pipeline hands the DiT: rows past each prompt's token count set to zero, and
the counts (`text_lens`, the DiT's argument). `tokenize(tokenizer, prompts, text_len)` pads and
truncates to `text_len` (512) with special tokens (EOS appended), as the pipeline does.
`TextEncoder` bundles tokenizer + params into a callable `prompts -> [L_i, dim] arrays` with a
stable `encoder_id` (the key of `data_pipeline.text_cache`).

Presets: `umt5-xxl` (vocab 256,384, dim 4096, 64 heads × 64, FFN 10,240, 24 layers, 32 buckets,
max distance 128: 5,680,910,336 parameters) and `tiny`. Conversion from transformers or the
original Wan `models_t5_umt5-xxl-enc-bf16.pth`: `mtvjax.models.encoders.convert_umt5`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from typing import ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.models.encoders.encoder_config import EncoderConfig
from mtvjax.models.layers.config_fields import config_from_variant
from mtvjax.models.layers.dtypes import DTYPES
from mtvjax.models.layers.norms import RMSNorm
from mtvjax.models.layers.param_tree import param_functions
from mtvjax.models.layers.param_tree import count_params  # noqa: F401 (part of this module's API)

FAMILY = "umt5"
# FFN activations by their transformers names (umT5's "gated-gelu" uses gelu_new = tanh GELU).
ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class UMT5Config(EncoderConfig):
    """Fields of the umT5 encoder (defaults = umt5-xxl as Wan-2.1 uses it)."""

    FAMILY: ClassVar[str] = FAMILY
    LABEL: ClassVar[str] = "umT5"
    ACTIVATIONS: ClassVar[dict] = ACTIVATIONS

    vocab_size: int = 256384
    dim: int = 4096
    num_heads: int = 64
    head_dim: int = 64
    ffn_dim: int = 10240
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    activation: str = "gelu_new"
    gated: bool = True
    text_len: int = 512                 # tokenizer padding / truncation length

    def __post_init__(self):
        super().__post_init__()
        if min(self.vocab_size, self.dim, self.num_heads, self.head_dim, self.ffn_dim,
               self.num_layers, self.text_len) < 1:
            raise ValueError("sizes must be positive")
        if self.num_buckets < 4 or self.num_buckets % 4:
            raise ValueError(f"num_buckets must be a multiple of 4, got {self.num_buckets}")
        if self.max_distance <= self.num_buckets // 4:
            raise ValueError("max_distance must exceed num_buckets / 4")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim


def umt5_presets() -> dict[str, dict]:
    """``umt5-xxl`` (Wan-2.1's text encoder; 5,680,910,336 parameters) and ``tiny``."""
    xxl = UMT5Config.default_fields()
    tiny = dict(xxl, vocab_size=128, dim=32, num_heads=4, head_dim=8, ffn_dim=48, num_layers=2,
                num_buckets=8, max_distance=16, text_len=16)
    return {"umt5-xxl": xxl, "tiny": tiny}


def umt5_config(variant: str | Mapping | UMT5Config = "umt5-xxl", **overrides) -> UMT5Config:
    """A config from a preset name, a fields mapping or a `UMT5Config`, with overrides."""
    return config_from_variant(UMT5Config, variant, umt5_presets, "umT5", overrides)


def config_from_transformers(config: Mapping, **overrides) -> UMT5Config:
    """From a transformers `UMT5Config` (or its config.json dict)."""
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    proj = config.get("feed_forward_proj", "gated-gelu")
    gated = proj.startswith("gated-")
    act = config.get("dense_act_fn") or proj.split("-")[-1]
    if act == "gelu" and gated and "dense_act_fn" not in config:
        act = "gelu_new"   # transformers maps "gated-gelu" to gelu_new
    fields = dict(vocab_size=config["vocab_size"], dim=config["d_model"],
                  num_heads=config["num_heads"], head_dim=config["d_kv"], ffn_dim=config["d_ff"],
                  num_layers=config["num_layers"],
                  num_buckets=config.get("relative_attention_num_buckets", 32),
                  max_distance=config.get("relative_attention_max_distance", 128),
                  eps=config.get("layer_norm_epsilon", 1e-6), activation=act, gated=gated)
    return UMT5Config(**{**fields, **overrides})


# ----------------------------------------------------------------------------------------------
# Relative position buckets
# ----------------------------------------------------------------------------------------------


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
    """int32 `[q_len, k_len]` bidirectional bucket of (key position − query position), as torch
    computes it (float32 log, truncation toward zero): half the buckets per direction, exact
    below `num_buckets / 4`, logarithmic up to `max_distance`, the last bucket beyond."""
    rel = np.arange(k_len, dtype=np.int64)[None, :] - np.arange(q_len, dtype=np.int64)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        ratio = np.log(rel.astype(np.float32) / np.float32(max_exact))
    ratio = ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = max_exact + np.trunc(np.where(rel < max_exact, 0, ratio)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


def _dense(features: int, name: str, cfg: UMT5Config) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=DTYPES[cfg.dtype],
                    param_dtype=DTYPES[cfg.param_dtype], precision=cfg.precision, name=name)


class UMT5Attention(nn.Module):
    """Unscaled multi-head self-attention with this layer's relative-position bias."""

    config: UMT5Config

    @nn.compact
    def __call__(self, x, buckets, key_mask):
        cfg = self.config
        b, length, _ = x.shape
        n, d = cfg.num_heads, cfg.head_dim
        q = _dense(cfg.inner_dim, "q", cfg)(x).reshape(b, length, n, d)
        k = _dense(cfg.inner_dim, "k", cfg)(x).reshape(b, length, n, d)
        v = _dense(cfg.inner_dim, "v", cfg)(x).reshape(b, length, n, d)
        table = self.param("relative_attention_bias", nn.initializers.normal(0.02),
                           (cfg.num_buckets, n), DTYPES[cfg.param_dtype])
        bias = jnp.take(table, buckets, axis=0).transpose(2, 0, 1)      # [n, q, k]
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k, precision=cfg.precision)
        scores = scores.astype(jnp.float32) + bias.astype(jnp.float32)[None]
        if key_mask is not None:
            scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", weights, v, precision=cfg.precision)
        return _dense(cfg.dim, "o", cfg)(out.reshape(b, length, n * d))


class UMT5FeedForward(nn.Module):
    config: UMT5Config

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        act = ACTIVATIONS[cfg.activation]
        if cfg.gated:
            h = act(_dense(cfg.ffn_dim, "wi_0", cfg)(x)) * _dense(cfg.ffn_dim, "wi_1", cfg)(x)
        else:
            h = act(_dense(cfg.ffn_dim, "wi", cfg)(x))
        return _dense(cfg.dim, "wo", cfg)(h)


class UMT5Layer(nn.Module):
    """One encoder block (scan body: `(x, buckets, key_mask) -> (x, None)`)."""

    config: UMT5Config

    @nn.compact
    def __call__(self, x, buckets, key_mask):
        cfg = self.config
        kw = dict(epsilon=cfg.eps, dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype])
        x = x + UMT5Attention(cfg, name="attn")(RMSNorm(**kw, name="norm1")(x), buckets, key_mask)
        x = x + UMT5FeedForward(cfg, name="ffn")(RMSNorm(**kw, name="norm2")(x))
        return x, None


class UMT5Encoder(nn.Module):
    """`(input_ids [B, L] int, attention_mask [B, L] or None) -> last hidden state [B, L, dim]`
    (in the compute dtype; after the final norm; padded rows as transformers computes them)."""

    config: UMT5Config

    @nn.compact
    def __call__(self, input_ids, attention_mask=None):
        cfg = self.config
        length = input_ids.shape[1]
        x = nn.Embed(cfg.vocab_size, cfg.dim, dtype=DTYPES[cfg.dtype],
                     param_dtype=DTYPES[cfg.param_dtype], name="token_embedding")(input_ids)
        buckets = jnp.asarray(relative_position_buckets(length, length, cfg.num_buckets,
                                                        cfg.max_distance))
        key_mask = None if attention_mask is None else jnp.asarray(attention_mask) > 0
        layers = nn.scan(UMT5Layer, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                         unroll=cfg.scan_unroll)
        x, _ = layers(cfg, name="layers")(x, buckets, key_mask)
        return RMSNorm(cfg.eps, dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype],
                       name="final_norm")(x)


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def dummy_inputs(config: UMT5Config, batch: int = 1) -> tuple:
    return jnp.zeros((batch, 2), jnp.int32), jnp.ones((batch, 2), jnp.int32)


param_shapes, init_params = param_functions(UMT5Encoder, umt5_config, dummy_inputs, "umt5-xxl")


# ----------------------------------------------------------------------------------------------
# Encoding as the Wan pipeline does it
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _encode_fn(config: UMT5Config):
    model = UMT5Encoder(config)

    def run(params, ids, mask):
        hidden = model.apply({"params": params}, ids, mask)
        lengths = jnp.sum(mask > 0, axis=1).astype(jnp.int32)
        keep = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
        return jnp.where(keep[..., None], hidden, jnp.zeros((), hidden.dtype)), lengths

    return jax.jit(run)


def encode(params, input_ids, attention_mask, config="umt5-xxl"):
    """`(embeddings [B, L, dim], text_lens [B])`: the last hidden state with rows past each
    prompt's token count (the mask's ones) set to zero, as the pipeline trims them and the DiT
    re-pads with zeros. Masks must be ones then zeros (right padding)."""
    cfg = umt5_config(config)
    mask = np.asarray(attention_mask)
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask > 0, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must be right-padded (ones, then zeros) per row")
    return _encode_fn(cfg)(params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, jnp.int32))


def tokenize(tokenizer, prompts: Sequence[str], text_len: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int32 `[B, text_len]`: special tokens added (EOS appended),
    truncated and padded to `text_len`, as the Wan pipeline calls its umT5 tokenizer.
    `tokenizer`: a transformers tokenizer (e.g. `load_tokenizer("…/google/umt5-xxl")`)."""
    out = tokenizer(list(prompts), padding="max_length", max_length=text_len, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="np")
    return (np.asarray(out["input_ids"], np.int32), np.asarray(out["attention_mask"], np.int32))


def load_tokenizer(path):
    """The umT5 tokenizer from a local folder (e.g. Wan's `google/umt5-xxl`); needs the `text`
    extra (`pip install -e ".[text]"`: transformers, sentencepiece, tokenizers)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the umT5 tokenizer needs transformers: pip install -e \".[text]\"") from e
    return AutoTokenizer.from_pretrained(str(path))


def tokenizer_id(tokenizer) -> str:
    """A short description of a tokenizer that changes when its vocabulary does."""
    try:
        vocab = sorted(tokenizer.get_vocab().items())
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    except (AttributeError, TypeError, NotImplementedError):
        digest = "unknown"
    return f"{type(tokenizer).__name__}:{digest}"


def text_encoder_id(checkpoint_id: str, tokenizer, text_len: int, dtype: str) -> str:
    """sha256 identity of (checkpoint, tokenizer vocabulary, text_len, compute dtype): what the
    embeddings of a prompt depend on besides the prompt."""
    identity = {"family": FAMILY, "checkpoint": checkpoint_id, "dtype": dtype,
                "tokenizer": tokenizer_id(tokenizer), "text_len": int(text_len)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class TextEncoder:
    """`encoder(prompts) -> list of float32 [L_i, dim]` (each prompt's own rows, L_i = its token
    count), in batches of `batch_size` (the last batch padded, so one compilation).

    `params` may be a zero-argument callable, called on first use (so building an encoder to
    learn its `encoder_id` does not load 5.7B parameters). `encoder_id` (`text_encoder_id`) keys
    `data_pipeline.text_cache`; `calls` counts the prompts encoded so far."""

    def __init__(self, params, config, tokenizer, *, checkpoint_id: str, batch_size: int = 4):
        self._params = params
        self.config = umt5_config(config)
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.encoder_id = text_encoder_id(checkpoint_id, tokenizer, self.config.text_len,
                                          self.config.dtype)
        self.calls = 0

    @property
    def params(self):
        if callable(self._params):
            self._params = self._params()
        return self._params

    def __call__(self, prompts: Sequence[str]) -> list[np.ndarray]:
        prompts = list(prompts)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            ids, mask = tokenize(self.tokenizer, chunk + [""] * (self.batch_size - len(chunk)),
                                 self.config.text_len)
            emb, lens = encode(self.params, ids, mask, self.config)
            emb = np.asarray(jax.device_get(emb).astype(jnp.float32))
            out += [emb[i, :int(lens[i])].copy() for i in range(len(chunk))]
            self.calls += len(chunk)
        return out
