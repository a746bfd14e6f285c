"""The MV-DiT-17B (Wan-2.1-I2V) family contract: the same names as
`mtvjax.models.mvdit.cogvideox.family` (see there for the list), reached through
`mtvjax.models.mvdit.registry.family("wan")`.
"""
from __future__ import annotations

import jax.numpy as jnp

from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit.registry import SamplerRecipe
from mtvjax.models.mvdit.wan import model as W
from mtvjax.models.mvdit.wan.config import wan_config, wan_presets

NAME = "wan"
TRAINING_TARGET = "flow_matching"
# Wan: x_t = (1 - σ)·x0 + σ·ε, target ε - x0, σ shifted
TRAINING_SCHEDULE = dict(kind=TRAINING_TARGET, num_train_timesteps=1000, shift=5.0)
DEFAULT_TRAINABLE = "motion"
# the released no-LoRA 17B run: flow Euler (shift 5), 50 steps, text CFG 6.0, no motion CFG
# (docs/reference/mvdit17b.md §6)
SAMPLER = SamplerRecipe(samplers=(("euler", "flow_euler"), ("unipc", "flow_unipc")),
                        guidance="text", steps=50, motion_cfg=1.0, text_cfg=6.0)
HAS_TEXT = True
ANIMATOR = "mtvjax.sample.animator_wan:WanAnimator"   # the sample pipeline, by name
HAS_IMAGE = True
ATTENTION_FIELD = "attention"   # model field naming the attention kernel


def build_model(config, dtype: str = "float32") -> W.MVDiTWan:
    return W.from_config(config, dtype=dtype)


def init_variables(model: W.MVDiTWan, rng) -> dict:
    return model.init(rng, *W.dummy_inputs(model.config))["params"]


def abstract_params(config) -> dict:
    """Unboxed `params` ShapeDtypeStructs of a project config's model."""
    return W.param_shapes(wan_config(config))


def logical_axes(config) -> dict:
    return W.param_logical_axes(wan_config(config))


def param_counts(config) -> dict:
    """{"total", "trainable", "tensors_released"}; `trainable` is the released recipe's count."""
    return W.param_counts(wan_config(config))


def motion_width(model_config) -> int:
    return model_config.motion_dim


model_presets = wan_presets
trainable = W.is_trainable_path


def check_motion_drop(config) -> None:
    """Motion dropout needs learnable unconditional motion tokens (or ISA conditioning)."""
    if not config.model.get("uncond_motion", False) and ISA.settings_of(config.model) is None:
        raise ValueError("train.motion_drop_prob > 0 needs model.uncond_motion=True (learnable "
                         "unconditional motion tokens); or set train.fit_uncond_motion")


def fit_uncond_motion(model_config, count: int, width: int) -> list[str]:
    if model_config.uncond_motion and model_config.num_uncond_motion_tokens == count:
        return []
    model_config.uncond_motion, model_config.num_uncond_motion_tokens = True, count
    return [f"model.uncond_motion=True with {count} tokens (motion dropout)"]


def wants_dataset_joints(model_config) -> bool:
    """The 17B's motion RoPE uses the released centred joints."""
    return False


def write_checkpoint(dst, params, config, report: dict) -> None:
    from mtvjax.models.mvdit.wan.convert import save_params
    save_params(dst, params, wan_config(config), config.get("variant", "custom"),
                {"save_dtype": "float32", **report})


def predict(model, params, x_t, timesteps, micro, tokens, drop_motion, drop_text, joints,
            config):
    """The image condition `y` = (mask, reference latents), the CLIP features, text dropped as
    `text_lens`=0.

    `ref_latents` `[b, F, ...]` (real-video records) are the VAE latents of the conditioning
    video (first frame, then zero frames), exactly the latent part of `y` at inference, and are
    used as they are; `[b, 1, ...]` (synthetic records) is a stand-in: that latent frame, then
    zeros. The mask is 1 on latent frame 0 only. The batch must hold `image` (the model's CLIP
    branch is never skipped in training).
    """
    b, f = x_t.shape[:2]
    ref = micro["ref_latents"]
    first = (jnp.arange(f) == 0)[None, :, None, None, None]
    y_ref = ref if ref.shape[1] == f else jnp.where(first, ref[:, :1], 0.0)
    mask = jnp.broadcast_to(first, (b, f) + x_t.shape[2:4] + (4,)).astype(x_t.dtype)
    if micro.get("image") is None:
        raise ValueError("the wan model has a CLIP image branch: the batch has no `image` "
                         "features")
    text = micro.get("text")
    if text is None:
        text = jnp.zeros((b, 1, config.model.text_dim), jnp.float32)
        lens = jnp.zeros((b,), jnp.int32)
    else:
        lens = micro["text_lens"]
    lens = jnp.where(drop_text, 0, lens)
    extra = {"motion_drop": drop_motion} if drop_motion is not None else {}
    return model.apply({"params": params}, x_t, timesteps, text, micro["image"],
                       tokens, mask=mask, ref=y_ref, text_lens=lens, **extra, **joints)
