"""Benchmark of the data loaders against the train steps they feed.

    python -m mtvjax.bench.data [--variant tiny] [--batch 8] [--frames 49] [--batches 200]
        [--latent-windows 4] [--no-latents]

Builds two synthetic datasets with `data_pipeline.build` in a temporary folder: motion only, and
motion plus stored video frames (procedural motion with rendered videos, frames in the 256-class
buckets). For each it times the trainer's pipeline, `make_batches` → `make_iterator` (shuffle,
per-record window and stride, augmentation, one frame count per batch, thread prefetch), over
`--batches` batches after the first, and reports records/s and batches/s. It then times the
jitted 4DMoT train step of `--variant` at the same batch shape on this machine (median of
`--steps` after compilation) and prints how many times faster the loader is than that step.

MV-DiT latent records from real video (skipped when `../shared/data/mtvcrafter_sample` is
absent): it writes the tiny random 7B checkpoint set (`mtvjax.tools.random_checkpoints`), builds
`configs/data/real_videos.py:tiny7b` from the sample's 3 videos and pose files with
`--latent-windows` windows per clip × 2 crops (VAE posterior, reference latents, 4DMoT tokens)
and reports the build's clips/s and records/s (XLA compilation of the encoders included, as a
user's build sees it), then the trainer's latent loader (`make_latent_batches` →
`make_iterator`) over those records against the tiny MV-DiT train step at the same batch.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from mtvjax.bench.common import REPO, median_seconds
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


SAMPLE = Path(os.environ.get("MTVJAX_SHARED_DATA", REPO.parent / "shared" / "data")) / "mtvcrafter_sample"


def build_latents(folder: Path, windows: int) -> tuple[Path, dict, float]:
    """The tiny 7B real-video latent dataset under `folder`: (dataset, manifest, seconds)."""
    from data_pipeline.latents import build
    from mtvjax.tools.random_checkpoints import write_set

    paths = write_set(str(folder / "ckpt"), "cogvideox", window=9)
    config = load_config(f"{REPO / 'configs' / 'data' / 'real_videos.py'}:tiny7b")
    config.inputs = (str(SAMPLE / "sampled_data.pkl"),)
    config.output = str(folder / "latents")
    config.checkpoints.vae, config.checkpoints.tokenizer = paths["vae"], paths["tokenizer"]
    config.windows_per_clip, config.crops_per_window, config.val_fraction = windows, 2, 0.0
    start = time.perf_counter()
    manifest = build(config)
    return Path(config.output), manifest, time.perf_counter() - start


def latent_rates(dataset: Path, batch: int, batches_timed: int, num_threads: int, prefetch: int,
                 steps: int) -> dict:
    """The tiny MV-DiT train step on the first batch (median of `steps`), then the loader's
    seconds per batch over `batches_timed` batches after the first."""
    from mtvjax.data.latent_batches import make_latent_batches
    from mtvjax.data.latent_shard_source import LatentShardSource
    from mtvjax.train.mvdit_trainer import MVDiTTrainer, fit_config

    source = LatentShardSource(dataset, "train")
    batches = make_latent_batches(source, batch, seed=0)
    first = batches[0]
    config = load_config(f"{REPO / 'configs' / 'mvdit.py'}:tiny")
    config.data.source, config.data.path, config.data.batch_size = "shards", str(dataset), batch
    config, _ = fit_config(config, source[0])
    trainer = MVDiTTrainer(config, devices=jax.devices()[:1], has_tokens=True)
    state = trainer.init_state()
    device_batch = trainer.device_batch(first)
    step = trainer.compiled(state, device_batch)

    def run():
        nonlocal state
        state, metrics = step(state, device_batch, trainer.frozen)
        jax.block_until_ready(metrics["loss"])

    step_s = median_seconds(run, steps)       # before the loader's threads start
    it = make_iterator(batches, num_threads, prefetch)
    next(it)
    start = time.perf_counter()
    for _ in range(batches_timed):
        next(it)
    loader_s = (time.perf_counter() - start) / batches_timed
    return {"records": len(source), "loader_s": loader_s, "step_s": step_s,
            "latents_shape": list(first["latents"].shape)}


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
    parser.add_argument("--latent-windows", type=int, default=4,
                        help="real-video latents: windows per clip (x 2 crops, 3 clips)")
    parser.add_argument("--no-latents", action="store_true",
                        help="skip the real-video latent build and the MV-DiT loader")
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
    if args.no_latents:
        return
    if not (SAMPLE / "sampled_data.pkl").is_file():
        print(f"MV-DiT latents: skipped, {SAMPLE} is absent (the MTVCrafter sample videos)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        dataset, manifest, build_s = build_latents(Path(tmp), args.latent_windows)
        row = latent_rates(dataset, args.batch, args.batches, args.threads, args.prefetch,
                           args.steps)
    counts = manifest["counts"]
    print(f"MV-DiT latents from real video (tiny 7B set, {counts['clips']} clips, "
          f"{counts['records']} records of {row['latents_shape'][1:]} latents)")
    print(f"  build: {build_s:.1f} s = {counts['clips'] / build_s:.3f} clips/s, "
          f"{counts['records'] / build_s:.2f} records/s (encoder compilation included)")
    print(f"  loader: {1 / row['loader_s']:.1f} batches/s of {args.batch}  "
          f"{row['step_s'] / row['loader_s']:.1f}x the tiny MV-DiT train step "
          f"({row['step_s'] * 1000:.1f} ms/step)")


if __name__ == "__main__":
    main()
