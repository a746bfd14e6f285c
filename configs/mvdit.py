"""MV-DiT (motion video diffusion transformer). Variants: `tiny`, `7b`, `tiny17b`, `17b`.

  config = load_config("configs/mvdit.py:7b")
  model = mtvjax.models.mvdit_cogvideox.from_config(config)

`config.model.family` selects the implementation: "cogvideox" (MV-DiT-7B, CogVideoX-5B based,
`mtvjax/models/mvdit_cogvideox.py`) or "wan" (MV-DiT-17B, Wan-2.1-I2V-14B based,
`mtvjax/models/mvdit_wan.py`, whose `wan_presets()` hold the `17b`/`tiny17b` model fields:
17,443,864,384 parameters of which 1,048,985,600 (the motion attention) train in the release).
`mesh`, `sharding_rules`, `remat` and the dtypes are shared by all families.

`7b` is the released MV-DiT-7B: 42 layers, 48 heads × 64 = 3072, E 512, text 4096 (the
CogVideoX-5B base config, reference_mvdit7b.md §1), 7,157,411,904 parameters (1,529 tensors).
Its motion RoPE needs the dataset-mean joints (`data/mean.npy`): set `model.joint_positions_path`
or `model.joint_positions` (a converted checkpoint stores the values). `tiny` is the reference's
tiny config (heads 2, head_dim 64 → D 128, 2 layers, E 64, text 32; 1,746,368 parameters),
whose (312, 3072) unconditional token cannot be used at D = 128 (§1).
"""
import ml_collections

from mtvjax.models.mvdit_wan import wan_presets

FAMILIES = ("cogvideox", "wan")

# Logical axis name -> mesh axis (None: replicated). Declared once for all MV-DiT families.
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("modulation", "tensor"),
    ("kv", None),
    ("layers", None),
    ("sublayers", None),
    ("time_embed", None),
    ("patch", None),
    ("text_embed", None),
    ("motion_tokens", None),
    ("vocab", None),
)


def cogvideox_model(variant: str) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict(dict(
        family="cogvideox",
        num_layers=42,
        num_heads=48,
        head_dim=64,               # D = num_heads * head_dim = 3072 = 4DMoT code width
        in_channels=32,            # 16 noisy + 16 reference-image latent channels
        out_channels=16,
        patch_size=2,
        time_embed_dim=512,
        text_embed_dim=4096,       # sizes the unused `text_proj` only (0: omit it)
        flip_sin_to_cos=True,
        freq_shift=0,
        norm_eps=1e-5,
        qk_norm_eps=1e-6,
        modulation_chunks=6,       # released: 6·D rows, chunks 3-5 dead (CogVideoX text stream)
        uncond_motion_shape=(312, 3072),   # released: fixed, 13 latent frames x 24 joints
        num_joints=24,
        joint_positions=(),        # [24, 3] mean joints in mm; () -> joint_positions_path
        joint_positions_path="",   # data/mean.npy of the release; "" and () -> zeros
        rope_theta=10000.0,
        # Paper variants (defaults: released behaviour).
        motion_every=1,            # motion cross-attention in blocks 0, k, 2k, ...; 0: none
        motion_v_norm=False,       # per-head LayerNorm on the motion values
        motion_query_rope="vision",  # "vision" | "4d": queries at (t, h, w, z=0), motion bands
        motion_out_zero_init=True,  # fresh attn0.to_out = 0 (init and base-model conversion)
        precision="default",       # matmul precision: default | high | highest
        attention_implementation="auto",
    ))
    if variant == "tiny":
        m.num_layers = 2
        m.num_heads = 2
        m.time_embed_dim = 64
        m.text_embed_dim = 32
    elif variant != "7b":
        raise ValueError(f"unknown cogvideox variant {variant!r}")
    return m


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    if variant in ("tiny", "7b"):
        c.model = cogvideox_model(variant)
    elif variant in ("tiny17b", "17b"):
        c.model = ml_collections.ConfigDict(wan_presets()[variant])
    else:
        raise ValueError(f"unknown mvdit variant {variant!r}: use tiny, 7b, tiny17b or 17b")

    c.dtype = "float32"            # compute dtype: float32 | bfloat16
    c.param_dtype = "float32"
    c.remat = "none"               # none | full | dots_saveable | <jax.checkpoint_policies name>

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: remaining devices
    c.sharding_rules = SHARDING_RULES
    return c
