"""MV-DiT (motion video diffusion transformer). Variants: `tiny`, `7b`, `tiny17b`, `17b`, `17b_720p`.

  config = load_config("configs/mvdit.py:7b")
  model = mtvjax.models.mvdit.cogvideox.model.from_config(config)

`config.model.family` selects the implementation: "cogvideox" (MV-DiT-7B, CogVideoX-5B based,
`mtvjax/models/mvdit/cogvideox/model.py`) or "wan" (MV-DiT-17B, Wan-2.1-I2V-14B based,
`mtvjax/models/mvdit/wan/model.py`: 17,443,864,384 parameters of which 1,048,985,600 (the motion
attention) train in the release). Each family's contract (`mtvjax.models.mvdit.registry`) holds
its variants' model fields (`model_presets()`: tiny, 7b | tiny17b, 17b) and its training
defaults (`TRAINING_SCHEDULE`, `DEFAULT_TRAINABLE`). `mesh`, `sharding_rules`, `remat` and the
dtypes are shared by all families.

Training (`mtvjax train --config configs/mvdit.py:VARIANT --workdir DIR`, in
mtvjax/train/mvdit_trainer.py) reads the sections `data` (latent shards from
`python -m data_pipeline.latents`, or the embedded synthetic latents), `motion` (precomputed tokens
in the records, or a frozen 4DMoT run inside the step), `schedule` (v-prediction for cogvideox,
flow matching for wan), `optim` and `train`. `train.dtype` is the compute dtype of the train step
(bf16 for 7b/17b; the parameters and the optimiser state stay float32); the top-level `dtype` is
the inference dtype.

`7b` is the released MV-DiT-7B: 42 layers, 48 heads × 64 = 3072, E 512, text 4096 (the
CogVideoX-5B base config, docs/reference/mvdit7b.md §1), 7,157,411,904 parameters (1,529 tensors).
Its motion RoPE needs the dataset-mean joints (`data/mean.npy`): set `model.joint_positions_path`
or `model.joint_positions` (a converted checkpoint stores the values). `tiny` is the reference's
tiny config (heads 2, head_dim 64 → D 128, 2 layers, E 64, text 32; 1,746,368 parameters),
whose (312, 3072) unconditional token cannot be used at D = 128 (§1).

Motion positional encoding (both families, `config.model`; `mtvjax/models/mvdit/motion_pe.py`):

  motion_pe          the motion KEYS' encoding, bands [t | x | y | z]:
    "4d"       released: t = latent frame, x/y/z = dataset-mean joints (mm, centred per axis).
    "dynamic"  t + the clip's own first-frame joints (the model call's `motion_joints`
               [B, 24, 3] mm, required; the trainer takes them from the records' `first_joints`).
    "time"     the t band only (x/y/z bands at position 0, unrotated; not a whole-head 1-D RoPE).
    "xy"       the x, y bands only;  "xyz": x, y, z (no time);  "none": no rotation.
    "learnable" no rotation; a learned `motion_pos_embed` (joint_embed [24, D] + frame_embed
               [max_motion_frames, D], init N(0, 0.02²)) added to the motion tokens before the
               key/value projections.
  motion_query_rope  the QUERIES: "vision" (released: the vision table) | "4d" (the paper's
               formulation: (t, h, w, z=0) in the motion bands). Rule: queries use the same
               position axes as the keys (t ↔ t, x ↔ h, y ↔ w, z ↔ 0). "4d"/"dynamic": as chosen;
               "time": only the t band rotates; "xy"/"xyz": (h, w) only, t at 0 (the vision
               table at (0, h, w) or the motion bands at (0, h, w, 0)); "none"/"learnable": the
               queries are not rotated in the motion attention.
  max_motion_frames  latent frames the "learnable" frame embedding covers (13 = 49 frames).

Motion conditioning (both families, `config.model`; `mtvjax/models/mvdit/isa_conditioning.py`):

  conditioning  "motion_attention" (released: 4DMoT tokens through the motion cross-attention) |
                "isa": interspatial attention on the window's raw joints (the model call's
                `motion_mm` [B, T, 24, 3] mm, T = 4(F-1)+1; the trainer passes the records'
                `motion`), ISA blocks in blocks 0, k, 2k, ... (k = isa.every) instead of the
                motion attention; no 4DMoT tokens and no unconditional tokens (motion dropout and
                motion CFG mask the example's points). The motion PE switches are then unused.
  isa           `mtvjax.models.mvdit.isa.isa_config()`: every, points_per_bone, frame_rule,
                fov_degrees (default camera over the latent H·8 × W·8 pixels), depth,
                num_frequencies, mlp_hidden, pe_max_frequency, num_heads, mlp_ratio, qk_norm,
                zero_init, plucker.
"""
import ml_collections

from mtvjax.models.mvdit import registry

# Logical axis name -> mesh axis (None: replicated). Declared once for all MV-DiT families.
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("sequence", "context"),      # video tokens of the activations (context parallelism)
    ("embed", ("fsdp", "context")),   # parameters fully sharded over the context devices too
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("modulation", "tensor"),
    ("kv", None),
    ("layers", None),
    ("sublayers", None),
    ("time_embed", ("fsdp", "context")),   # modulation kernels [E, k·D] are sharded on E
    ("patch", None),
    ("text_embed", None),
    ("motion_tokens", None),
    ("motion_joints", None),      # rows of the learnable motion PE (motion_pe="learnable")
    ("motion_frames", None),
    ("vocab", None),
)


def model_fields(variant: str) -> ml_collections.ConfigDict:
    """`config.model` of a variant: the preset of the family that has it (fields documented in
    the family's config dataclass)."""
    presets = {}
    for name in registry.FAMILIES:
        presets.update(registry.family(name).model_presets())
    if variant not in presets:
        raise ValueError(f"unknown mvdit variant {variant!r}: use one of {sorted(presets)}")
    return ml_collections.ConfigDict(presets[variant])


# Full-size variants: the model preset each one trains and its mesh (-1: the remaining devices).
# What fits is measured by the memory plan (`python -m mtvjax.bench.memory`, README table):
# FSDP over all devices and full rematerialisation for 49 × 512 × 512; 81 × 720 × 1280 (75,600
# video tokens) adds context parallelism over 8 devices (40 heads / 8), parameters sharded
# over fsdp × context.
FULL_SIZE = {
    "7b": ("7b", dict(data=1, fsdp=-1, context=1, tensor=1)),
    "17b": ("17b", dict(data=1, fsdp=-1, context=1, tensor=1)),
    "17b_720p": ("17b", dict(data=1, fsdp=-1, context=8, tensor=1)),
}


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    preset, mesh = FULL_SIZE.get(variant, (variant, dict(data=-1, fsdp=1, context=1, tensor=1)))
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    c.model = model_fields(preset)

    c.dtype = "float32"            # compute dtype: float32 | bfloat16
    c.param_dtype = "float32"
    # none | full | dots_saveable | <jax.checkpoint_policies name>; full-size: full (what fits)
    c.remat = "full" if variant in FULL_SIZE else "none"

    # -1: remaining devices. context: video tokens split over devices (attention by all-to-all;
    # model.num_heads must divide by context × tensor).
    c.mesh = ml_collections.ConfigDict(mesh)
    c.sharding_rules = SHARDING_RULES
    add_training(c, variant)
    return c


def add_training(c: ml_collections.ConfigDict, variant: str) -> None:
    """The training sections (data, motion, schedule, optim, train) of an MV-DiT config."""
    family = registry.family(c.model.family)
    full_size = variant in FULL_SIZE
    c.data = ml_collections.ConfigDict(dict(
        source="synthetic",        # synthetic (made in memory) | shards (data_pipeline.latents)
        path="",                   # shards: the built dataset folder (or DATASET/SPLIT)
        split="train",
        val_path="",               # optional held-out shards for the final evaluation
        batch_size=8,              # global batch (all processes, all accumulation steps)
        num_threads=2,
        prefetch=4,
        shuffle_seed=0,
        text_rows=0,               # pad text embeddings to this many rows (0: longest in batch)
        # synthetic source: procedural motion rendered to latents (mtvjax.data.synthetic_latents)
        synthetic_windows=512,
        synthetic_frames=49,       # pixel frames per window (8k + 1); latent frames 1 + (n-1)/4
        synthetic_latent_size=(64, 64),
        synthetic_text_rows=0,     # rows of a per-motion-kind text embedding (0: no text)
        # rows of per-clip stand-in CLIP-image features (families with an image branch)
        synthetic_image_rows=257 if family.HAS_IMAGE else 0,
        # projection: stand-in motion tokens (fixed random projection of the joints) in the
        # items; none: tokens come from the frozen 4DMoT (motion.tokenizer_checkpoint)
        synthetic_tokens="projection",
    ))
    c.motion = ml_collections.ConfigDict(dict(
        tokens="auto",             # auto | records | tokenizer
        tokenizer_checkpoint="",   # a 4DMoT checkpoint folder; run frozen inside the step
        tokenizer_step=-1,         # -1: its latest step
    ))
    c.schedule = ml_collections.ConfigDict(family.TRAINING_SCHEDULE)   # the family's target
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=2e-5,
        warmup_steps=300,          # linear from 0, then constant
        b1=0.9,
        b2=0.99,
        eps=1e-8,
        weight_decay=1e-2,
        grad_clip_norm=1.0,        # 0 disables clipping
        grad_accum_steps=1,        # micro-batches per step (data.batch_size divides by it)
        # all | motion: only the motion attention (+ unconditional motion tokens) | lora: only
        # low-rank adapters (optim.lora) on the frozen model; frozen parameters are kept
        # bit-identical, with no optimiser state and no gradients.
        trainable=family.DEFAULT_TRAINABLE,
        # trainable="lora" (mtvjax/train/lora.py): W + (alpha/rank)·A@B on the kernels whose
        # "/"-joined path matches a regex of `targets`; default: the attention projections
        # (cogvideox attn1 self / attn0 motion q,k,v,out; wan self_attn, cross_attn (text),
        # motion_attn q,k,v,o)
        lora=ml_collections.ConfigDict(dict(
            rank=16,
            alpha=16.0,
            targets=(r"(^|/)attn[01]/to_(q|k|v|out)/kernel$",
                     r"(^|/)(self_attn|cross_attn|motion_attn)/(q|k|v|o)/kernel$"),
        )),
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=100_000,
        dtype="bfloat16" if full_size else "float32",   # compute dtype of the train step
        motion_drop_prob=0.2,      # motion tokens -> learnable unconditional tokens
        text_drop_prob=0.1,        # text embeddings -> none (wan; cogvideox has no text input)
        fit_uncond_motion=True,    # give the model unconditional tokens of the data's [M, width]
        init_from="",              # converted/pretrained params checkpoint (convert command)
        log_every=50,
        checkpoint_every=1000,
        keep_checkpoints=3,
        stop_after_steps=0,        # >0: checkpoint and exit after this many steps of this run
        eval_batches=0,            # batches of the final evaluation (fixed noise), 0: none
        peak_flops_per_device=0.0,  # for MFU; 0: measure an f32 matmul on this machine
        allow_config_change=False,  # resume although model/optim/data keys changed
    ))
    c.resume = True
    if variant == "17b_720p":
        c.data.synthetic_frames = 81
        c.data.synthetic_latent_size = (90, 160)
    if not full_size:
        c.data.synthetic_windows = 64
        c.data.synthetic_frames = 9
        c.data.synthetic_latent_size = (8, 8)
        c.data.synthetic_text_rows = 4 if family.HAS_TEXT else 0
        c.data.synthetic_image_rows = 4 if family.HAS_IMAGE else 0
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 10
        c.train.num_steps = 200
        c.train.log_every = 10
        c.train.checkpoint_every = 100
