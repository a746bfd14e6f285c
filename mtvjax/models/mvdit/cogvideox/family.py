"""The MV-DiT-7B (CogVideoX) family contract, as the registry hands it to trainers and tools.

Both families (`cogvideox`, `wan`) expose the same names; code outside the family folders
reaches a family only through `mtvjax.models.mvdit.registry.family(name)`:

* `NAME`, `TRAINING_TARGET` (the `schedule.kind` it trains with, also the prediction type it
  samples with), `TRAINING_SCHEDULE` (the default `config.schedule` section),
  `DEFAULT_TRAINABLE` (the default `optim.trainable`), `SAMPLER` (its sampling recipe, a
  `registry.SamplerRecipe`), `HAS_TEXT`, `HAS_IMAGE` (a CLIP image condition), `ANIMATOR`
  ("module:class" of its `mtvjax.sample` pipeline, named as a string so the model layer never
  imports the sample layer), `ATTENTION_FIELD` (the `config.model` field that names the
  attention implementation).
* `model_presets()` — {variant: `config.model` fields} of the family's variants.
* `build_model(config, dtype)` — the model of a project config in compute `dtype` (a name).
* `init_variables(model, rng)` — boxed (logically partitioned) `params` of a fresh model.
* `abstract_params(config)` / `param_counts(config)` — shapes and counts, nothing allocated.
* `logical_axes(config)` — the `params` tree of logical-axis PartitionSpecs.
* `motion_width(model_config)` — width of the motion tokens the model takes.
* `trainable(path)` — the released recipe's trainable parameters (`optim.trainable="motion"`).
* `check_motion_drop(config)` — refuses motion dropout the model cannot represent.
* `fit_uncond_motion(model_config, count, width)` — sizes the unconditional motion tokens to the
  data's `[count, width]` tokens in place; returns notes of what changed.
* `wants_dataset_joints(model_config)` — whether the motion RoPE should take the dataset's mean
  joints (none configured).
* `predict(model, params, x_t, timesteps, micro, tokens, drop_motion, drop_text, joints,
  config)` — the denoiser call of one training micro-batch (`drop_motion` None: no dropout).
* `write_checkpoint(dst, params, config, report)` — writes the float32 `params` of a project
  config as step 0 under `dst` in the format the family's `mtvjax convert` writes (and its
  animator loads), `report` as the config JSON's `conversion` entry.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mtvjax.models.layers.dtypes import DTYPES
from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit.cogvideox import model as mv
from mtvjax.models.mvdit.cogvideox.config import cogvideox_presets as model_presets
from mtvjax.models.mvdit.registry import SamplerRecipe

NAME = "cogvideox"
TRAINING_TARGET = "v_prediction"
# CogVideoX-5B: scaled-linear betas, zero-terminal SNR
TRAINING_SCHEDULE = dict(kind=TRAINING_TARGET, num_train_timesteps=1000, beta_start=0.00085,
                         beta_end=0.012, snr_shift_scale=1.0, rescale_betas_zero_snr=True)
DEFAULT_TRAINABLE = "all"
# the released 7B run: DPM-Solver++(2M) SDE, 50 steps, motion CFG 3.0 (docs/reference/mvdit7b.md §6)
SAMPLER = SamplerRecipe(samplers=(("dpm", "cogvideox_dpm"), ("ddim", "cogvideox_ddim")),
                        guidance="motion", steps=50, motion_cfg=3.0, text_cfg=1.0)
HAS_TEXT = False
ANIMATOR = "mtvjax.sample.animator_cogvideox:CogVideoXAnimator"   # the sample pipeline, by name
HAS_IMAGE = False
ATTENTION_FIELD = "attention_implementation"   # model field naming the attention kernel


def build_model(config, dtype: str = "float32") -> mv.MVDiTCogVideoX:
    return mv.from_config(config, dtype=DTYPES[dtype])


def init_variables(model: mv.MVDiTCogVideoX, rng) -> dict:
    return model.init(rng, **mv.dummy_inputs(model))["params"]


def abstract_params(config) -> dict:
    """Unboxed `params` ShapeDtypeStructs of a project config's model."""
    return mv.abstract_params(mv.from_config(config))


def logical_axes(config) -> dict:
    return mv.logical_axes(mv.from_config(config))


def param_counts(config) -> dict:
    """{"total", "trainable", "tensors_released"}; `trainable` is the released recipe's count."""
    params = abstract_params(config)
    total, tensors = mv.param_count(params)
    return {"total": total, "tensors_released": tensors, "trainable": _count_trainable(params)}


def _count_trainable(params) -> int:
    flat = traverse_util.flatten_dict(params)
    return sum(int(np.prod(v.shape)) for k, v in flat.items() if trainable(k))


def motion_width(model_config) -> int:
    return model_config.num_heads * model_config.head_dim


def trainable(path: tuple) -> bool:
    """The motion attention (`attn0`), the unconditional motion tokens, the learnable motion
    embedding and, with ISA conditioning, the ISA blocks."""
    return ("attn0" in path or path[-1] == "unconditional_motion_token"
            or "motion_pos_embed" in path or ISA.is_isa_path(path))


def check_motion_drop(config) -> None:
    """The 7B always holds its unconditional motion tokens: any dropout is representable."""


def fit_uncond_motion(model_config, count: int, width: int) -> list[str]:
    shape = tuple(model_config.uncond_motion_shape or ())
    if shape == (count, width):
        return []
    model_config.uncond_motion_shape = (count, width)
    return [f"model.uncond_motion_shape {shape} -> {(count, width)} (the data's motion tokens)"]


def wants_dataset_joints(model_config) -> bool:
    return not model_config.joint_positions and not model_config.joint_positions_path


def write_checkpoint(dst, params, config, report: dict) -> None:
    from mtvjax.models.mvdit.cogvideox.convert import save_params
    config = ml_collections.ConfigDict(config.to_dict())
    config.conversion = report
    save_params(dst, params, config)


def predict(model, params, x_t, timesteps, micro, tokens, drop_motion, drop_text, joints,
            config):
    ref = micro["ref_latents"]
    ref = jnp.broadcast_to(ref, x_t.shape) if ref.shape[1] == 1 else ref
    return model.apply({"params": params}, x_t, ref_latents=ref, timesteps=timesteps,
                       motion_tokens=tokens, motion_drop=drop_motion, **joints)
