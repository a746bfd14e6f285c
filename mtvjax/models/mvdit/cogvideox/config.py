"""Model fields of the MV-DiT-7B (CogVideoX) family as a frozen dataclass, and its presets.

`CogVideoXDiTConfig` is `config.model` of a `configs/mvdit.py` project config (family
"cogvideox"); `from_fields` refuses fields it does not know (`checked_fields`). The defaults are
the released 7B (CogVideoX-5B widths, docs/reference/mvdit7b.md §1); `cogvideox_presets()` holds
`7b` and the reference's `tiny` check config. The module attributes these fields become are
documented on `mtvjax.models.mvdit.cogvideox.model.MVDiTCogVideoX`.
"""
from __future__ import annotations

import dataclasses

from mtvjax.models.layers.config_fields import checked_fields
from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit import motion_pe as PE

FAMILY = "cogvideox"


@dataclasses.dataclass(frozen=True)
class CogVideoXDiTConfig:
    """`config.model` fields of the 7B family (defaults = the released MV-DiT-7B)."""

    num_layers: int = 42
    num_heads: int = 48
    head_dim: int = 64                 # D = num_heads·head_dim = 3072 = 4DMoT code width
    in_channels: int = 32              # 16 noisy + 16 reference-image latent channels
    out_channels: int = 16
    patch_size: int = 2
    time_embed_dim: int = 512
    text_embed_dim: int = 4096         # sizes the unused `text_proj` only (0: omit it)
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    norm_eps: float = 1e-5
    qk_norm_eps: float = 1e-6
    modulation_chunks: int = 6         # released: 6·D rows, chunks 3-5 dead
    uncond_motion_shape: tuple | None = (312, 3072)   # fixed in the release; None/(): omit
    num_joints: int = 24
    joint_positions: tuple = ()        # [24, 3] mean joints in mm; () -> joint_positions_path
    joint_positions_path: str = ""     # data/mean.npy of the release; "" and () -> zeros
    rope_theta: float = 10000.0
    motion_every: int = 1              # motion cross-attention in blocks 0, k, 2k, ...; 0: none
    motion_v_norm: bool = False
    motion_query_rope: str = "vision"  # vision | 4d
    motion_pe: str = "4d"              # 4d | dynamic | learnable | time | xy | xyz | none
    max_motion_frames: int = PE.DEFAULT_MAX_MOTION_FRAMES
    motion_out_zero_init: bool = True
    precision: str | None = "default"  # matmul precision: default | high | highest
    attention_implementation: str | None = "auto"   # registered SDPA kernel (attention.py)
    attention_chunk: int = 512         # "chunked" query chunk / "splash" query block
    attention_kv_chunk: int = 0        # "chunked" online-softmax key chunk (0: all keys) / "splash"
                                       # key block (0: attention_chunk)
    conditioning: str = "motion_attention"   # motion_attention (released) | isa
    isa: ISA.ISASettings = ISA.ISASettings()
    scan_unroll: int = 1               # layer groups per scan step (>= groups: no loop, no
                                       # stacked residuals; faster at a few layers, compile
                                       # time then grows with depth)

    def __post_init__(self):
        shape = self.uncond_motion_shape
        object.__setattr__(self, "uncond_motion_shape",
                           tuple(int(n) for n in shape) if shape else None)
        joints = self.joint_positions
        object.__setattr__(self, "joint_positions",
                           tuple(tuple(float(v) for v in row) for row in joints) if joints else ())
        object.__setattr__(self, "isa", ISA.ISASettings.create(self.isa))
        ISA.check_conditioning(self.conditioning)

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_fields(cls, fields) -> "CogVideoXDiTConfig":
        """From a dict / ConfigDict of model fields (a `family` entry must be "cogvideox" and is
        dropped); unknown fields are an error."""
        if isinstance(fields, cls):
            return fields
        return cls(**checked_fields(cls, fields, FAMILY, "MV-DiT-7B model"))


def cogvideox_presets() -> dict[str, dict]:
    """`config.model` fields of the 7B family, for `configs/mvdit.py` (`family` "cogvideox").

    * ``7b``: the released MV-DiT-7B.
    * ``tiny``: the reference's tiny check config (2 layers of 2 heads, time embedding 64,
      `text_proj` from 32); 1,746,368 parameters.
    """
    released = {"family": FAMILY, **dataclasses.asdict(CogVideoXDiTConfig())}
    tiny = dict(released, num_layers=2, num_heads=2, time_embed_dim=64, text_embed_dim=32)
    return {"7b": released, "tiny": tiny}
