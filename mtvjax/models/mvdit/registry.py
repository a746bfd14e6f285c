"""MV-DiT family registry: `model.family` → the family's contract module.

big_vision style: `family("wan")` imports `mtvjax.models.mvdit.wan.family`; every family module
defines the names of `CONTRACT` (documented in `mtvjax.models.mvdit.cogvideox.family`), its
sampling recipe as a `SamplerRecipe`. Callers never branch on the family's name.
"""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

FAMILIES = ("cogvideox", "wan")   # MV-DiT-7B, MV-DiT-17B
DEFAULT = "cogvideox"

CONTRACT = (
    "NAME", "TRAINING_TARGET", "TRAINING_SCHEDULE", "DEFAULT_TRAINABLE", "SAMPLER", "HAS_TEXT",
    "HAS_IMAGE", "ANIMATOR", "ATTENTION_FIELD", "model_presets", "build_model", "init_variables",
    "abstract_params", "logical_axes", "param_counts", "motion_width", "trainable",
    "check_motion_drop", "fit_uncond_motion", "wants_dataset_joints", "predict",
    "write_checkpoint",
)


@dataclasses.dataclass(frozen=True)
class SamplerRecipe:
    """How a family samples, named so the model layer imports neither `mtvjax.diffusion` nor
    `mtvjax.sample`; the prediction type is the family's `TRAINING_TARGET`.

    samplers: `sampling.sampler` option → factory in `mtvjax.diffusion.samplers` (called with the
      step count; the first option is the released one).
    guidance: "motion" (motion CFG only, unconditional branch = unconditional motion tokens,
      float32 combination) | "text" (text CFG with the negative prompt in the unconditional
      slot, composed with motion CFG when `motion_cfg` != 1; output-dtype combination).
    steps, motion_cfg, text_cfg: the released run's `sampling` settings.
    """

    samplers: tuple[tuple[str, str], ...]
    guidance: str
    steps: int
    motion_cfg: float
    text_cfg: float

    @property
    def default_sampler(self) -> str:
        return self.samplers[0][0]

    def factory(self, option: str) -> str:
        """The `mtvjax.diffusion.samplers` factory of a `sampling.sampler` option."""
        names = dict(self.samplers)
        if option not in names:
            raise ValueError(f"sampling.sampler {option!r}: this family samples with "
                             f"{sorted(names)}")
        return names[option]


def family(name: str) -> ModuleType:
    """The contract module of family `name`; ValueError for an unknown family."""
    if name not in FAMILIES:
        raise ValueError(f"unknown MV-DiT family {name!r}; expected one of {FAMILIES}")
    return importlib.import_module(f"mtvjax.models.mvdit.{name}.family")


def of(config) -> ModuleType:
    """The family of a project config (`config.model.family`, default cogvideox)."""
    return family(config.model.get("family", DEFAULT))
