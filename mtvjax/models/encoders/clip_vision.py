"""The CLIP ViT-H/14 vision tower of MV-DiT-17B (Wan-2.1-I2V's image encoder) in Flax linen.

Wan's `open-clip-xlm-roberta-large-vit-huge-14` visual tower (docs/reference/mvdit17b.md §6.6):
14×14 patch convolution without bias → class token prepended → learned position embeddings
(257 = 1 + 16²) → pre-LN on the embeddings → pre-LN transformer blocks (width 1280, 16 heads,
MLP 5120, exact GELU, LayerNorm eps 1e-5 computed in float32) → the hidden state **after block
31 of 32, without the final norm**: `[B, 257, 1280]`, the DiT's `image_emb`.

`output_layer` says which hidden state is returned, counted like transformers'
`hidden_states` (0: the embeddings after the pre-LN; k: after block k); only that many blocks
are built (the Wan preset has 31 of the checkpoint's 32; conversion skips the unused last block,
the post-LN and the projection, and reports them). `activation` is "gelu" (exact, ViT-H/14) or
"quick_gelu" (x·σ(1.702x), OpenAI CLIP). Blocks run under `nn.scan` (params stacked on a leading
layer axis). Input: normalised images, channels last `[B, H, W, 3]` (see
`mtvjax.models.encoders.image_preprocess.clip_preprocess`).

Presets: `clip-vit-h-14` (Wan's 31-block tower: 611,086,080 parameters; the full 32 blocks are
630,763,520) and `tiny`. Conversion from transformers, Wan's `.pth` and open_clip layouts:
`mtvjax.models.encoders.convert_clip_vision`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtvjax.models.encoders.encoder_config import EncoderConfig
from mtvjax.models.layers.config_fields import config_from_variant
from mtvjax.models.layers.dtypes import DTYPES
from mtvjax.models.layers.norms import LayerNorm
from mtvjax.models.layers.param_tree import jitted_apply, param_functions
from mtvjax.models.layers.param_tree import count_params  # noqa: F401 (part of this module's API)

FAMILY = "clip_vision"
ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(EncoderConfig):
    """Fields of the vision tower (defaults = Wan-2.1-I2V's ViT-H/14, penultimate block)."""

    FAMILY: ClassVar[str] = FAMILY
    LABEL: ClassVar[str] = "CLIP vision"
    ACTIVATIONS: ClassVar[dict] = ACTIVATIONS

    image_size: int = 224
    patch_size: int = 14
    channels: int = 3
    width: int = 1280
    num_heads: int = 16
    mlp_dim: int = 5120
    num_layers: int = 32            # blocks of the architecture / checkpoint
    output_layer: int = 31          # hidden state returned (0 = embeddings, k = after block k)
    activation: str = "gelu"
    eps: float = 1e-5

    def __post_init__(self):
        super().__post_init__()
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if not 0 <= self.output_layer <= self.num_layers:
            raise ValueError(f"output_layer must be in [0, {self.num_layers}], "
                             f"got {self.output_layer}")

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


def clip_vision_presets() -> dict[str, dict]:
    """``clip-vit-h-14`` (Wan-2.1-I2V: ViT-H/14, output after block 31 of 32) and ``tiny``."""
    vit_h = CLIPVisionConfig.default_fields()
    tiny = dict(vit_h, image_size=28, patch_size=7, width=32, num_heads=4, mlp_dim=64,
                num_layers=3, output_layer=2)
    return {"clip-vit-h-14": vit_h, "tiny": tiny}


def clip_vision_config(variant: str | Mapping | CLIPVisionConfig = "clip-vit-h-14",
                       **overrides) -> CLIPVisionConfig:
    """A config from a preset name, a fields mapping or a `CLIPVisionConfig`, with overrides."""
    return config_from_variant(CLIPVisionConfig, variant, clip_vision_presets, "CLIP vision",
                               overrides)


def config_from_transformers(config: Mapping, output_layer: int = -2,
                             **overrides) -> CLIPVisionConfig:
    """From a transformers `CLIPVisionConfig` (or a `CLIPConfig` / their dicts).
    `output_layer`: a `hidden_states` index, negative counting from the end (−2: penultimate)."""
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    config = config.get("vision_config", config)
    layers = int(config["num_hidden_layers"])
    index = output_layer if output_layer >= 0 else layers + 1 + output_layer
    fields = dict(image_size=config["image_size"], patch_size=config["patch_size"],
                  channels=config.get("num_channels", 3), width=config["hidden_size"],
                  num_heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"],
                  num_layers=layers, output_layer=index,
                  activation=config.get("hidden_act", "quick_gelu"),
                  eps=config.get("layer_norm_eps", 1e-5))
    return CLIPVisionConfig(**{**fields, **overrides})


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


def _dense(features: int, name: str, cfg: CLIPVisionConfig) -> nn.Dense:
    return nn.Dense(features, dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype],
                    precision=cfg.precision, name=name)


class CLIPBlock(nn.Module):
    """Pre-LN block: x + attn(norm1 x), then x + mlp(norm2 x) (scan body)."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, x, _=None):
        cfg = self.config
        b, length, width = x.shape
        n, d = cfg.num_heads, cfg.head_dim
        ln = dict(epsilon=cfg.eps, dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype])
        h = LayerNorm(**ln, name="norm1")(x)
        q = _dense(width, "q", cfg)(h).reshape(b, length, n, d)
        k = _dense(width, "k", cfg)(h).reshape(b, length, n, d)
        v = _dense(width, "v", cfg)(h).reshape(b, length, n, d)
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k, precision=cfg.precision)
        weights = jax.nn.softmax(scores.astype(jnp.float32) * (d ** -0.5), axis=-1)
        out = jnp.einsum("bnqk,bknd->bqnd", weights.astype(v.dtype), v, precision=cfg.precision)
        x = x + _dense(width, "o", cfg)(out.reshape(b, length, width))
        h = LayerNorm(**ln, name="norm2")(x)
        h = ACTIVATIONS[cfg.activation](_dense(cfg.mlp_dim, "fc1", cfg)(h))
        return x + _dense(width, "fc2", cfg)(h), None


class CLIPVisionTower(nn.Module):
    """`images [B, H, W, C]` (normalised, H = W = image_size) → hidden state `output_layer`
    `[B, 1 + (H/p)², width]` in the compute dtype."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, images):
        cfg = self.config
        dtype, pdtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
            raise ValueError(f"images must be [B, {cfg.image_size}, {cfg.image_size}, "
                             f"{cfg.channels}], got {list(images.shape)}")
        p = cfg.patch_size
        x = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                    dtype=dtype, param_dtype=pdtype, precision=cfg.precision,
                    name="patch_embedding")(images.astype(dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, cfg.width)
        init = nn.initializers.normal(cfg.width ** -0.5)
        cls = self.param("class_embedding", init, (cfg.width,), pdtype)
        pos = self.param("position_embedding", init, (cfg.num_tokens, cfg.width), pdtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, cfg.width)), x], axis=1)
        x = x + pos.astype(dtype)[None]
        x = LayerNorm(cfg.eps, dtype=dtype, param_dtype=pdtype, name="pre_norm")(x)
        if cfg.output_layer:
            blocks = nn.scan(CLIPBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                             length=cfg.output_layer, unroll=cfg.scan_unroll)
            x, _ = blocks(cfg, name="layers")(x, None)
        return x


# ----------------------------------------------------------------------------------------------
# Parameters and the jitted encoder
# ----------------------------------------------------------------------------------------------


def dummy_inputs(config: CLIPVisionConfig, batch: int = 1) -> tuple:
    return (jnp.zeros((batch, config.image_size, config.image_size, config.channels),
                      jnp.float32),)


param_shapes, init_params = param_functions(CLIPVisionTower, clip_vision_config, dummy_inputs,
                                            "clip-vit-h-14")


def encode_images(params, images, config="clip-vit-h-14"):
    """`[B, 257, 1280]` CLIP features (the DiT's `image_emb`) of preprocessed images
    `[B, 224, 224, 3]` (`image_preprocess.clip_preprocess`)."""
    return jitted_apply(CLIPVisionTower, clip_vision_config(config))(params, jnp.asarray(images))
