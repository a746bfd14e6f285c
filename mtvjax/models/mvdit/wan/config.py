"""Model fields of the MV-DiT-17B (Wan-2.1-I2V) family as a frozen dataclass, its presets and
the scanned block layout.

`WanDiTConfig` is `config.model` of a `configs/mvdit.py` project config (family "wan") plus the
shared top-level `dtype`, `param_dtype`, `remat` (`TOP_LEVEL`); `from_fields` refuses fields it
does not know. The defaults are the released MV-DiT-17B (docs/reference/mvdit17b.md, "17B §"
below, §1); `wan_presets()` holds `17b` and the document's `tiny17b`. `wan_config` builds a
config from a preset name, a fields mapping or a project config; `project_config` writes the
configs/mvdit.py-shaped dict the converters store. `block_location` / `stacked_axes` describe
where a released block lives in the scanned parameter tree (`mtvjax.models.mvdit.wan.model`).
`RELEASED_CENTRED_JOINTS` are the released motion table's joint positions (17B §5.2).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from mtvjax.models.layers.attention import DEFAULT_IMPLEMENTATION, AttentionKernel
from mtvjax.models.layers.config_fields import checked_config, config_from_variant
from mtvjax.models.layers.dtypes import DTYPES, check_dtype_fields, remat_policy
from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit import motion_pe as PE

# Dataset-mean SMPL joints minus their float32 column means, mm (17B §5.2 "Precision"): the exact
# float32 positions of the released motion table, so it can be rebuilt without data/mean.npy.
RELEASED_CENTRED_JOINTS = np.array([
    [-0.0212978125, 19.1070862, 41.7080078], [37.6396866, 87.4716492, 39.5495605],
    [-38.5407677, 91.8256531, 42.9959717], [1.83283639, -62.5306854, 63.2614746],
    [85.5214767, 314.443604, -54.1829834], [-91.0816345, 316.165619, -30.487915],
    [4.86790895, -165.802399, 40.8522949], [97.3257523, 611.953735, 15.6912842],
    [-88.3197708, 608.868408, 34.4730225], [3.9647243, -204.320099, 27.4915771],
    [118.628487, 664.03302, -46.8779297], [-109.615578, 663.726685, -32.6437988],
    [-2.4598577, -373.421204, 39.5362549], [52.164196, -297.852295, 29.298584],
    [-47.6342621, -296.517975, 44.2646484], [1.68810868, -426.561798, -8.49694824],
    [116.034988, -310.45694, 18.9602051], [-107.660728, -311.97757, 42.9191895],
    [168.395767, -165.977127, -15.2663574], [-169.889206, -174.359604, 26.2944336],
    [138.301086, -141.753433, -82.7803955], [-151.363876, -157.406998, -55.3431396],
    [126.484077, -135.104095, -102.078125], [-146.2621, -153.55275, -79.1401367],
], dtype=np.float32)

FAMILY = "wan"
TOP_LEVEL = ("dtype", "param_dtype", "remat")   # shared project-config entries


@dataclasses.dataclass(frozen=True)
class WanDiTConfig:
    """Model fields of the 17B family (defaults = the released MV-DiT-17B, 17B §1)."""

    dim: int = 5120
    num_heads: int = 40
    num_layers: int = 40
    ffn_dim: int = 13824
    in_channels: int = 36
    out_channels: int = 16
    patch_size: tuple = (1, 2, 2)
    text_dim: int = 4096
    text_len: int | None = 512          # rows the text is zero-padded to (None: no padding)
    freq_dim: int = 256
    image_dim: int = 1280
    eps: float = 1e-6                  # every WanLayerNorm / WanRMSNorm in the DiT
    image_eps: float = 1e-5            # the two LayerNorms of img_emb (MLPProj)
    motion_every: int = 4              # motion attention in blocks i % motion_every == 0; 0: none
    motion_dim: int = 3072             # 4DMoT token width, zero-padded to dim
    num_joints: int = 24
    heads_major_motion_keys: bool = True   # the released key layout (§2.3); False = "fixed"
    uncond_motion: bool = False            # learnable unconditional motion tokens (not released)
    num_uncond_motion_tokens: int = 312
    motion_pe: str = "4d"              # motion keys' PE: 4d | dynamic | learnable | time | xy | ...
    motion_query_rope: str = "vision"  # vision (released) | 4d: queries at (t, h, w, 0)
    max_motion_frames: int = PE.DEFAULT_MAX_MOTION_FRAMES   # "learnable" frame embedding rows
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"                # none | full | a jax.checkpoint_policies name
    attention: str | None = None       # registered SDPA kernel (None: "auto"; attention.py)
    attention_chunk: int = 512         # "chunked" query chunk / "splash" query block
    attention_kv_chunk: int = 0        # "chunked" online-softmax key chunk (0: all keys) / "splash"
                                       # key block (0: attention_chunk)
    precision: str | None = None       # matmul precision ("highest" for strict float32 on GPU)
    scan_unroll: int = 1
    conditioning: str = "motion_attention"   # motion_attention (released) | isa
    isa: ISA.ISASettings = ISA.ISASettings()  # ISA settings (a dict in to_fields / JSON)

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "isa", ISA.ISASettings.create(self.isa))
        ISA.check_conditioning(self.conditioning)
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        if self.motion_every and self.motion_dim > self.dim:
            raise ValueError(f"motion_dim {self.motion_dim} exceeds dim {self.dim}: the motion "
                             "tokens are zero-padded to the model width, never projected (§2.4)")
        remat_policy(self.remat)
        PE.check_switches(self.motion_pe, self.motion_query_rope)
        check_dtype_fields(self)
        if self.motion_every < 0 or self.num_layers < 1:
            raise ValueError("need motion_every >= 0 and num_layers >= 1")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def attention_kernel(self) -> AttentionKernel:
        """The SDPA kernel of every attention in the model (self, cross, motion, ISA)."""
        return AttentionKernel(self.attention or DEFAULT_IMPLEMENTATION, self.attention_chunk,
                               self.attention_kv_chunk)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def patch_volume(self) -> int:
        return int(np.prod(self.patch_size))

    @property
    def uses_isa(self) -> bool:
        return self.conditioning == "isa"

    @property
    def group_every(self) -> int:
        """Blocks per scanned group: `isa.every` (ISA) or `motion_every`."""
        return self.isa.every if self.uses_isa else self.motion_every

    def motion_blocks(self) -> tuple[int, ...]:
        """Indices of the blocks holding motion attention (0, 4, ..., 36 released)."""
        if not self.motion_every or self.uses_isa:
            return ()
        return tuple(range(0, self.num_layers, self.motion_every))

    def to_fields(self) -> dict:
        fields = dataclasses.asdict(self)
        fields["patch_size"] = list(self.patch_size)
        return fields

    @classmethod
    def from_fields(cls, fields) -> "WanDiTConfig":
        """From a dict / ConfigDict of model fields (a `family` entry must be "wan" and is
        dropped); unknown fields are an error."""
        return checked_config(cls, fields, FAMILY, "MV-DiT-17B model")


def wan_presets() -> dict[str, dict]:
    """`config.model` fields of the 17B family, for `configs/mvdit.py` (`family` "wan"; the
    shared top-level `dtype`, `param_dtype`, `remat` are not repeated here).

    * ``17b``: the released MV-DiT-17B (Wan2.1-I2V-14B widths + motion attention in blocks
      0, 4, ..., 36): 17,443,864,384 parameters, 1,048,985,600 of them in the motion modules.
    * ``tiny17b``: the document's tiny check config (dim 256, 2 heads of 128, 5 layers, ffn 512,
      text_dim 64; 7,782,720 parameters in 207 tensors) with 64-wide motion tokens (zero-padded
      to 256). head_dim stays 128 so the released RoPE band splits (44/42/42, 44/28/28/28) hold.
    """
    released = {k: v for k, v in WanDiTConfig().to_fields().items() if k not in TOP_LEVEL}
    released = {"family": FAMILY, **released}
    tiny = dict(released, dim=256, num_heads=2, num_layers=5, ffn_dim=512, text_dim=64,
                motion_dim=64, num_uncond_motion_tokens=48)
    return {"17b": released, "tiny17b": tiny}


def project_config(variant: str | Mapping | WanDiTConfig = "17b", **overrides) -> dict:
    """A configs/mvdit.py-shaped plain dict: {"variant", "model": {family "wan", ...},
    "dtype", "param_dtype", "remat"} (what the converters store with a checkpoint)."""
    config = wan_config(variant, **overrides)
    fields = config.to_fields()
    model = {"family": FAMILY, **{k: v for k, v in fields.items() if k not in TOP_LEVEL}}
    name = variant if isinstance(variant, str) else "custom"
    return {"variant": name, "model": model, **{k: fields[k] for k in TOP_LEVEL}}


def wan_config(variant: str | Mapping | WanDiTConfig = "17b", **overrides) -> WanDiTConfig:
    """A `WanDiTConfig` from a preset name, a fields mapping, a `WanDiTConfig`, or a project
    config (`{"model": {...}, "dtype", ...}` / ConfigDict), with field overrides."""
    if hasattr(variant, "get") and variant.get("model") is not None:   # a project config
        model = variant.get("model")
        fields = dict(model.to_dict() if hasattr(model, "to_dict") else model)
        fields.update({k: variant.get(k) for k in TOP_LEVEL if variant.get(k) is not None})
        variant = fields
    return config_from_variant(WanDiTConfig, variant, wan_presets, "17B", overrides)


def block_location(config: WanDiTConfig, index: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Where released block `index` lives: (param path prefix, stacking index).

    `blocks/motion_block` [G], `blocks/plain` [G, k−1], `tail/motion_block`, `tail/plain` [r−1],
    or `blocks` [L] when motion_every is 0 (groups of `isa.every` with ISA conditioning).
    """
    if not 0 <= index < config.num_layers:
        raise IndexError(f"block {index} out of range for {config.num_layers} layers")
    k = config.group_every
    if not k:
        return ("blocks",), (index,)
    groups = config.num_layers // k
    g, p = divmod(index, k)
    if g < groups:
        return (("blocks", "motion_block"), (g,)) if p == 0 else (("blocks", "plain"), (g, p - 1))
    return (("tail", "motion_block"), ()) if p == 0 else (("tail", "plain"), (p - 1,))


def stacked_axes(config: WanDiTConfig, path: tuple) -> int:
    """How many leading scan axes parameter `path` has: `blocks` [L] or `blocks/motion_block`
    [G] 1, `blocks/plain` [G, k−1] 2, `tail/plain` [r−1] 1, anything else 0."""
    if path[0] == "blocks":
        return 1 if (not config.group_every or path[1] == "motion_block") else 2
    return 1 if path[:2] == ("tail", "plain") else 0
