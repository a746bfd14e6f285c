"""Shards of the MTVCrafter NLF sample: 3 dance clips (SMPL joints from NLF) with their videos.

  python -m data_pipeline.build --config configs/data/mtvcrafter_sample.py
  python -m data_pipeline.build --config configs/data/mtvcrafter_sample.py:pixels

Variants: `reference` stores each clip's video path and frame indices; `pixels` also stores the
video frames, resized and cropped to the nearest resolution bucket. Clips keep their video's
frame rate (30, 43 and 44 fps), as MTVCrafter trains on video frames.
"""
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("MTVJAX_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))


def get_config(variant: str = "reference") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "mtvcrafter_sample"
    c.inputs = (os.path.join(SHARED, "mtvcrafter_sample", "sampled_data.pkl"),)
    c.output = os.path.join(REPO, "datasets", c.name if variant == "reference" else f"{c.name}_{variant}")
    c.ingest = ml_collections.ConfigDict(dict(missing="error"))  # options of data_pipeline.readers.ingest
    c.target_fps = 0.0          # resample every clip to this rate; 0 keeps each clip's own
    c.min_frames = 33           # shorter clips are skipped (33 = the shortest 4DMoT window)
    # share of clips (by a seeded hash of their key) in `val`; with seed 0 this holds out one of
    # the three clips (sampled_data.pkl#2, 653 frames), so `--config.data.val_path=DATASET/val` works
    c.val_fraction = 0.25
    c.seed = 0
    c.shard_records = 1024
    c.video = ml_collections.ConfigDict(dict(
        store="reference",      # reference | pixels
        base_resolution=512,    # bucket class: 512 is MV-DiT's table; smaller scales it down
        shard_frames=4096,      # stored video frames per frame shard
    ))
    if variant == "pixels":
        c.video.store = "pixels"
        c.video.base_resolution = 256
    elif variant != "reference":
        raise ValueError(f"unknown variant {variant!r}: use reference or pixels")
    return c
