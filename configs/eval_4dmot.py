"""Evaluation of a 4DMoT checkpoint. Variants: `sample`, `cmu`, `synthetic`, `all`.

  mtvjax eval --config configs/eval_4dmot.py:sample --config.checkpoint=DIR

Each dataset is a folder or file read by `data_pipeline.readers.ingest` (NLF/MTVCrafter `.pkl`, BVH,
SMPL-parameter `.npz`, joint `.npy`/`.npz`) or the embedded procedural source. Clips are cut into
consecutive segments of `frames` frames (the tail is covered by an end-aligned segment).
"""
from pathlib import Path

import ml_collections

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METRICS = ("mpjpe", "root_mpjpe", "pa_mpjpe", "accel_error", "per_joint_mpjpe", "perplexity",
           "active_codes", "code_usage")

DATASETS = {
    "sample": dict(name="mtvcrafter_sample", source="files",
                   path=str(SHARED_DATA / "mtvcrafter_sample" / "sampled_data.pkl")),
    "cmu": dict(name="cmu_bvh", source="files", path=str(SHARED_DATA / "cmu_bvh")),
    "synthetic": dict(name="synthetic", source="synthetic", path="", sequences=32),
}


def get_config(name: str = "sample") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = name
    c.checkpoint = ""          # required: a trained or converted 4DMoT checkpoint folder
    c.frames = 49
    c.stride = 1
    c.batch_size = 8
    c.metrics = METRICS
    c.report = ""              # JSON report path; default: <checkpoint>/eval_<name>.json
    if name == "all":
        c.datasets = [dict(d) for d in DATASETS.values()]
    elif name in DATASETS:
        c.datasets = [dict(DATASETS[name])]
    else:
        raise ValueError(f"unknown eval_4dmot config {name!r}: use {', '.join(DATASETS)} or all")
    return c
