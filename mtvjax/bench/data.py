"""Benchmark of the data loader against the 4DMoT train step it feeds.

    python -m mtvjax.bench.data [--variant tiny] [--batch 8] [--frames 49] [--batches 200]

Builds two synthetic datasets with `data_pipeline.build` in a temporary folder: motion only, and
motion plus stored video frames (procedural motion with rendered videos, frames in the 256-class
buckets). For each it times the trainer's pipeline, `make_batches` → `make_iterator` (shuffle,
per-record window and stride, augmentation, one frame count per batch, thread prefetch), over
`--batches` batches after the first, and reports records/s and batches/s. It then times the
jitted 4DMoT train step of `--variant` at the same batch shape on this machine (median of
`--steps` after compilation) and prints how many times faster the loader is than that step.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from mtvjax.bench.common import REPO
from mtvjax.bench.tokenizer import jax_figures
from mtvjax.config import load_config
from mtvjax.data.loader import make_batches, make_iterator
from mtvjax.data.shard_source import ShardSource


def build_dataset(folder: Path, clips: int, frames: tuple[int, int], video_size=None) -> Path:
    """Synthetic inputs under `folder`, built into `folder/ds`; returns the dataset folder."""
    from data_pipeline.build import build
    from data_pipeline.synthetic_inputs import write_inputs

    write_inputs(folder / "clips", clips, frames, video_size=video_size)
    config = load_config(f"{REPO / 'configs' / 'data' / 'mtvcrafter_sample.py'}:pixels")
    config.inputs, config.output, config.val_fraction = (str(folder / "clips"),), str(folder / "ds"), 0.0
    config.video.store = "reference" if video_size is None else "pixels"
    build(config)
    return folder / "ds"


def loader_rate(dataset: Path, batch: int, frames: int, batches: int, num_threads: int,
                prefetch: int) -> dict:
    """Records/s and batches/s of the pipeline over `batches` batches after the first."""
    source = ShardSource(dataset, "train", min_frames=frames)
    groups = source.frame_sizes() if any(source.frame_sizes()) else None
    pipeline = make_batches(source, batch, (frames,), (1, 2), seed=0, scale_aug=0.1,
                            shift_aug=0.1, groups=groups)
    it = make_iterator(pipeline, num_threads, prefetch)
    first = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    pixels = first["frames"].nbytes if "frames" in first else 0
    return {"batches_per_s": batches / seconds, "records_per_s": batches * batch / seconds,
            "batch_mb": (first["motion"].nbytes + pixels) / 2 ** 20,
            "frames_shape": first["frames"].shape if "frames" in first else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="tiny", help="4DMoT config variant whose step is timed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--clips", type=int, default=512, help="motion-only clips (video: 1/16)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=4)
    args = parser.parse_args()

    length = (args.frames * 2 + 10, args.frames * 2 + 60)      # room for stride 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {
            "motion": loader_rate(build_dataset(tmp / "motion", args.clips, length), args.batch,
                                  args.frames, args.batches, args.threads, args.prefetch),
            "motion+frames": loader_rate(
                build_dataset(tmp / "video", max(args.batch, args.clips // 16), length, (272, 480)),
                args.batch, args.frames, args.batches, args.threads, args.prefetch),
        }
    config = load_config(f"{REPO / 'configs' / '4dmot.py'}:{args.variant}")
    config.mesh = {"data": 1}
    batch = np.random.default_rng(0).normal(0, 300, (args.batch, args.frames, 24, 3)).astype(np.float32)
    step_s = jax_figures(config, batch, args.steps)["train_step_s"]

    print(f"data loader, batch {args.batch} x {args.frames} frames, {args.threads} threads, "
          f"{jax.devices()[0].platform} jax {jax.__version__}")
    for name, row in rows.items():
        extra = f", frames {list(row['frames_shape'])}" if row["frames_shape"] else ""
        print(f"  {name:<14} {row['records_per_s']:>9.1f} records/s  {row['batches_per_s']:>8.1f} "
              f"batches/s  ({row['batch_mb']:.2f} MiB/batch{extra})  "
              f"{row['batches_per_s'] * step_s:>7.1f}x the train step")
    print(f"  4DMoT `{args.variant}` train step: {step_s:.3f} s ({1 / step_s:.2f} steps/s)")


if __name__ == "__main__":
    main()
