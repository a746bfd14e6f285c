"""MV-DiT latent shards rendered from the package's procedural motion (no downloads, no VAE).

  python -m data_pipeline.latents --config configs/data/synthetic_latents.py:tiny
  mtvjax train --config configs/mvdit.py:tiny --workdir /tmp/mvdit \
      --config.data.source=shards --config.data.path=datasets/synthetic_latents_tiny

Variants: `7b` (49-frame windows, 64×64×16 latents = 512×512 video, 3072-wide stand-in tokens),
`tiny` (9-frame windows, 8×8×16 latents, 128-wide tokens for the tiny 7B), `tiny17b` (as tiny
with 64-wide tokens and 4 rows of 64-wide text for the tiny 17B). Set `tokens.kind=tokenizer`
and `tokens.tokenizer_checkpoint=DIR` to store real 4DMoT tokens, or `none` to tokenise inside
the train step.
"""
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = f"synthetic_latents_{variant}"
    c.output = os.path.join(REPO, "datasets", c.name)
    c.motion = ml_collections.ConfigDict(dict(
        source="synthetic",        # synthetic | pkl | npy | shards (a built motion dataset)
        path="", split="train",
        synthetic_sequences=256,
        synthetic_frames=(60, 120),
        seed=0,
    ))
    c.frames = 49                  # pixel frames per window: 8k + 1 (49 -> 13 latent frames)
    c.windows_per_clip = 1
    c.latents = ml_collections.ConfigDict(dict(
        renderer="synthetic",      # synthetic (joint blobs + appearance); real videos: real_videos.py
        size=(64, 64),             # latent H, W (= video / 8)
        channels=16,
        dtype="float32",           # float32 | float16 on disk (read back as float32)
    ))
    c.tokens = ml_collections.ConfigDict(dict(
        kind="projection",         # projection | tokenizer | none
        width=3072,                # projection: token width (the model's motion width)
        tokenizer_checkpoint="",   # tokenizer: a 4DMoT checkpoint folder
    ))
    c.text = ml_collections.ConfigDict(dict(rows=0, dim=4096))
    c.image = ml_collections.ConfigDict(dict(rows=0, dim=1280))   # stand-in CLIP rows (17B)
    c.val_fraction = 0.1
    c.seed = 0
    c.shard_records = 256
    if variant in ("tiny", "tiny17b"):
        c.frames = 9
        c.motion.synthetic_sequences = 64
        c.motion.synthetic_frames = (20, 40)
        c.latents.size = (8, 8)
        c.tokens.width = 128
        if variant == "tiny17b":
            c.tokens.width = 64
            c.text = ml_collections.ConfigDict(dict(rows=4, dim=64))
            c.image.rows = 4
    elif variant != "7b":
        raise ValueError(f"unknown variant {variant!r}: use 7b, tiny or tiny17b")
    return c
