"""The fields and checks every condition-encoder config (umT5, CLIP vision) shares: compute and
parameter dtypes, matmul precision, scan unroll, an `activation` from the class's `ACTIVATIONS`,
and the round trip through a plain fields dict tagged with the class's `FAMILY`."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from mtvjax.models.layers.config_fields import checked_config
from mtvjax.models.layers.dtypes import check_dtype_fields, check_precision_field


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Base of the encoder configs; subclasses set `FAMILY`, `LABEL`, `ACTIVATIONS` and add an
    `activation` field and their sizes (all with defaults)."""

    FAMILY: ClassVar[str]
    LABEL: ClassVar[str]                # the model's name in errors
    ACTIVATIONS: ClassVar[dict]

    dtype: str = "float32"              # compute dtype
    param_dtype: str = "float32"
    precision: str | None = None        # matmul precision ("highest": strict f32 on GPU)
    scan_unroll: int = 1

    def __post_init__(self):
        if self.activation not in self.ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; "
                             f"known: {sorted(self.ACTIVATIONS)}")
        check_dtype_fields(self)
        check_precision_field(self)

    def to_fields(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_fields(cls, fields):
        return checked_config(cls, fields, cls.FAMILY, cls.LABEL)

    @classmethod
    def default_fields(cls) -> dict:
        """The defaults as a fields dict tagged with the family (the base of the presets)."""
        return {"family": cls.FAMILY, **cls().to_fields()}
