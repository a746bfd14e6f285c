"""4DMoT tokenizer training. Variants: `paper`, `released`, `tiny`.

  mtvjax train --config configs/4dmot.py:tiny --workdir /tmp/4dmot
  mtvjax train --config configs/4dmot.py:paper --workdir DIR \
      --config.data.source=pkl --config.data.path=../shared/data/mtvcrafter_sample/sampled_data.pkl

`paper` is the architecture of the paper and released checkpoint (8192 x 3072 codebook,
48,323,075 trainable parameters) with the paper's differential-motion normalisation; `released`
is the same network with the released checkpoint's normalisation (z-score only, the released
statistics files), its training script's commitment weight and its trainer's dead-code reset
rule (`quantizer.reset_rule`); `tiny` trains in minutes on CPU.
"""
import ml_collections

FRAME_COUNTS = (33, 49, 81, 97, 129)


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0

    c.model = ml_collections.ConfigDict(dict(
        channels=(128, 512),       # widths of the two temporal ×2 stages
        num_res_blocks=3,
        code_dim=3072,
        codebook_size=8192,
        window_frames=8,           # encoder window; latent window = window_frames / 2**stages
        num_groups=32,
        joint_kernel=3,
        dilation_reference=512,    # ResBlock dilation = max(1, reference // width - 1)
        coord_dim=3,               # 2: the paper's "3D quantisation" over (t, x, y), no depth
        conv_impl="matmul",        # window-exact matrix products; "lax": XLA convolutions
    ))

    c.quantizer = ml_collections.ConfigDict(dict(
        enabled=True,              # False: continuous tokens (quantizer bypassed; ablation)
        beta=0.25,                 # commitment weight
        decay=0.99,
        dead_threshold=1.0,        # EMA count below which a code is dead
        reset_every=20,
        reset_rule="paper",        # "paper": reset every dead code; "released": only codes never
                                   # alive at a non-reset step (the released trainer's code)
        init_noise=0.01,
    ))

    c.normalization = ml_collections.ConfigDict(dict(
        differential=True,         # paper: subtract the normalised first frame
        mean_path="",              # per-joint mean/std .npy files; empty: computed from the data
        std_path="",
    ))

    c.data = ml_collections.ConfigDict(dict(
        source="synthetic",        # synthetic | pkl | npy | shards
        path="",                   # file or folder for pkl / npy; built dataset folder for shards
        split="train",             # shards: the split to train on (val_path may be DATASET/val)
        val_path="",               # optional held-out data for the eval pass at the end
        batch_size=32,
        frame_counts=FRAME_COUNTS,
        strides=(1, 2),
        scale_aug=0.1,             # coordinates scaled by 1 + U(-a, a)
        shift_aug=0.1,             # shifted by U(-a, a) x the body's extent, per axis
        synthetic_sequences=512,
        synthetic_frames=(160, 320),
        num_threads=2,
        prefetch=4,
        shuffle_seed=0,
    ))

    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-4,
        final_learning_rate=1e-5,  # for the last `final_fraction` of training
        final_fraction=1.0 / 3.0,
        warmup_steps=0,
        b1=0.9,
        b2=0.99,
        weight_decay=1e-4,
        grad_clip_norm=0.0,        # 0 disables clipping
    ))

    c.train = ml_collections.ConfigDict(dict(
        num_steps=300_000,
        log_every=50,
        checkpoint_every=1000,
        keep_checkpoints=3,
        eval_batches=8,            # batches of the final evaluation pass (active codes, recon)
        stop_after_steps=0,        # >0: checkpoint and exit after this many steps of this run
        allow_config_change=False,  # resume although model/optim/data keys changed
    ))
    c.resume = True                # pick up the latest checkpoint in the workdir

    c.mesh = ml_collections.ConfigDict(dict(data=-1))   # -1: all remaining devices
    # Logical axis name -> mesh axis. Declared once; 4DMoT is data parallel.
    c.sharding_rules = (("batch", "data"),)

    if variant == "paper":
        pass
    elif variant == "released":
        c.normalization.differential = False
        c.quantizer.beta = 0.5
        c.quantizer.reset_rule = "released"
    elif variant == "tiny":
        c.model.channels = (32, 64)
        c.model.num_res_blocks = 1
        c.model.code_dim = 64
        c.model.codebook_size = 256
        c.model.num_groups = 8
        c.model.dilation_reference = 128
        c.normalization.differential = False
        c.data.batch_size = 8
        c.data.frame_counts = (33, 49)
        c.data.synthetic_sequences = 128
        c.optim.learning_rate = 1e-3
        c.optim.final_learning_rate = 1e-4
        c.optim.warmup_steps = 20
        c.train.num_steps = 400
        c.train.log_every = 20
        c.train.checkpoint_every = 100
        c.train.eval_batches = 4
    else:
        raise ValueError(f"unknown 4dmot variant {variant!r}: use paper, released or tiny")
    return c
