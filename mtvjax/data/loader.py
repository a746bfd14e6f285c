"""Grain pipelines that turn a motion source into bucketed, augmented training batches.

Pipeline: clip indices → per-epoch seeded shuffle → per-process slice → batches of indices →
`MotionBatchBuilder` (one frame count and stride per batch, so each shape compiles once; random
window per clip; random scale/shift) → prefetching iterator. Every step is a pure function of
the seed and the element index, so the iterator state is one integer and a restored iterator
yields exactly the batches an uninterrupted one would.

A source is anything with `__len__` and `__getitem__(i) -> MotionClip`: synthetic motion, clips
read from files, or the ArrayRecord shards `python -m data_pipeline.build` writes
(`mtvjax.data.shard_source.ShardSource`, `data.source="shards"`).
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Sequence

import grain
import numpy as np
from absl import flags

from mtvjax.data.motion_files import MotionClip, MotionFormatError, load_clips
from mtvjax.data.shard_source import ShardSource
from mtvjax.data.synthetic_motion import SyntheticMotionSource


class ClipListSource:
    """In-memory clips (e.g. read from `.pkl`/`.npy` files) as a random-access source."""

    def __init__(self, clips: Sequence[MotionClip]):
        if not clips:
            raise ValueError("no usable motion clips")
        self.clips = list(clips)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> MotionClip:
        return self.clips[int(index)]

    def num_frames(self, index: int) -> int:
        return int(self.clips[int(index)].motion.shape[0])


def clip_length(source, index: int) -> int:
    """Frames of clip `index`, without reading its motion when the source can tell."""
    if hasattr(source, "num_frames"):
        return int(source.num_frames(index))
    return int(source[index].motion.shape[0])


@dataclasses.dataclass
class MotionBatchBuilder:
    """Builds this process's share of one global batch of clip indices; a Grain random map.

    Every process sees the same global batches and draws the same per-batch choices: one (frame
    count, stride) pair per batch and one seed per sample position, so the global batch is the
    same on 1 or many processes; process p reads only the sample positions
    `[p * B / n, (p + 1) * B / n)`, its block of the global array. A clip too short for the
    drawn pair is read at stride 1; if still too short it is replaced by a clip of the batch that
    fits and counted in `skipped` (if none fits, the frame count drops to the longest that does).
    `index` holds the source index of each sample. Clips with stored video frames (`frames`,
    e.g. from `ShardSource`) also give the same window of their frames, `frames`
    `[B, F, H, W, 3]` uint8; all clips of a batch must then share one frame size (see `groups`
    of `make_batches`).
    """

    source: object
    frame_counts: Sequence[int]
    strides: Sequence[int] = (1,)
    scale_aug: float = 0.0
    shift_aug: float = 0.0
    process_index: int = 0
    process_count: int = 1

    def __call__(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        lengths = np.array([clip_length(self.source, i) for i in indices])
        frames = int(rng.choice(self.frame_counts))
        stride = int(rng.choice(self.strides))
        sample_seed = int(rng.integers(2 ** 62))
        fitting = [f for f in sorted(self.frame_counts) if f <= lengths.max()]
        if not fitting:
            raise ValueError(f"no clip of this batch has {min(self.frame_counts)} frames: "
                             f"{[self.source[i].name for i in indices]}")
        frames = min(frames, fitting[-1])
        fits = np.flatnonzero(lengths >= frames)
        local = len(indices) // self.process_count
        skipped = 0
        windows, pixels, used = [], [], []
        for k in range(self.process_index * local, (self.process_index + 1) * local):
            sample_rng = np.random.default_rng([sample_seed, k])
            index = indices[k]
            if lengths[k] < frames:
                index = indices[int(sample_rng.choice(fits))]
                skipped += 1
            clip = self.source[index]
            motion = clip.motion
            step = stride if len(motion) >= (frames - 1) * stride + 1 else 1
            span = (frames - 1) * step + 1
            start = int(sample_rng.integers(0, len(motion) - span + 1))
            windows.append(self._augment(motion[start:start + span:step], sample_rng))
            used.append(index)
            if getattr(clip, "frames", None) is not None:
                pixels.append(clip.frames[start:start + span:step])
        batch = {"motion": np.stack(windows).astype(np.float32),
                 "skipped": np.array(skipped, np.int32), "index": np.array(used, np.int64)}
        if pixels:
            if len(pixels) != len(windows) or len({p.shape for p in pixels}) > 1:
                raise ValueError("a batch mixes clips with different (or without) video frame sizes; "
                                 "batch them by frame size with make_batches(groups=...)")
            batch["frames"] = np.stack(pixels)
        return batch

    def _augment(self, motion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.scale_aug == 0 and self.shift_aug == 0:
            return motion
        scale = 1.0 + rng.uniform(-self.scale_aug, self.scale_aug)
        extent = np.ptp(motion[0], axis=0).max()              # body size in this clip, mm
        shift = rng.uniform(-self.shift_aug, self.shift_aug, size=3) * extent
        return motion * scale + shift


def make_source(data_config, min_frames: int):
    """The configured source and the errors of clips skipped while loading it."""
    if data_config.source == "synthetic":
        return SyntheticMotionSource(data_config.synthetic_sequences,
                                     tuple(data_config.synthetic_frames), data_config.shuffle_seed), []
    if data_config.source in ("pkl", "npy", "files"):
        if not data_config.path:
            raise ValueError(f"data.source={data_config.source!r} needs --config.data.path")
        clips, errors = load_clips(data_config.path, min_frames=min_frames, skip_bad=True)
        if not clips:
            raise MotionFormatError(data_config.path, f"no usable motion clips; all {len(errors)} "
                                    f"refused, e.g. {'; '.join(e[:200] for e in errors[:3])}")
        return ClipListSource(clips), errors
    if data_config.source == "shards":
        if not data_config.path:
            raise ValueError("data.source='shards' needs --config.data.path (a built dataset folder)")
        source = ShardSource(data_config.path, data_config.split, min_frames)
        return source, source.skipped
    raise ValueError(f"unknown data.source {data_config.source!r}: use synthetic, pkl, npy or shards")


class EpochShuffle:
    """An endless sequence of `items`, reshuffled every pass: element i is `items[p_e[i mod n]]`
    with p_e the permutation of pass e = i // n drawn from (`seed`, e). Random access (so Grain
    checkpoints it by position) with one numpy permutation per pass, cached: Grain's own
    `shuffle` (a per-element index shuffle) costs ~1 ms per element for sources of a few dozen
    items (~25 µs at 1,000), which made the batch indices of a small fine-tuning set slower to
    draw than the records themselves."""

    def __init__(self, items, seed: int):
        self.items = np.asarray(items, np.int64)
        self.seed = int(seed)
        if not len(self.items):
            raise ValueError("nothing to shuffle: the source is empty")

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int) -> int:
        epoch, position = divmod(int(index), len(self.items))
        return int(self.items[self._permutation(epoch)[position]])

    @functools.lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.items))


def _grouped_batches(groups: Sequence, batch_size: int, seed: int) -> grain.MapDataset:
    """Index batches drawn within groups (each reshuffled per pass), groups mixed by size."""
    keys = list(groups)
    members = [np.array([i for i, k in enumerate(keys) if k == g], np.int64)
               for g in sorted(set(keys), key=repr)]
    streams = [grain.MapDataset.source(EpochShuffle(m, seed + g))
               .batch(batch_size, drop_remainder=True) for g, m in enumerate(members)]
    return streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, [len(m) for m in members])


def index_batches(size: int, batch_size: int, seed: int,
                  groups: Sequence | None = None) -> grain.MapDataset:
    """Endless global batches of indices into a `size`-item source: one seeded shuffle per pass
    (a batch may span two passes), or with `groups` (one key per item) every batch drawn within
    one group."""
    if groups is None:
        return grain.MapDataset.source(EpochShuffle(np.arange(size), seed)).batch(
            batch_size, drop_remainder=True)
    return _grouped_batches(groups, batch_size, seed)


def make_batches(source, batch_size: int, frame_counts: Sequence[int], strides: Sequence[int],
                 seed: int, scale_aug: float = 0.0, shift_aug: float = 0.0,
                 process_index: int = 0, process_count: int = 1,
                 groups: Sequence | None = None) -> grain.MapDataset:
    """An endless, random-access MapDataset of this process's share of each global batch.

    `batch_size` is the global batch; each of `process_count` processes gets
    `batch_size / process_count` samples per element, `{'motion', 'skipped', 'index'}` (plus
    `frames` for clips with video frames). `groups`, one hashable key per clip (e.g. the video
    frame size, `ShardSource.frame_sizes()`), makes every batch come from one group.
    """
    if batch_size % process_count:
        raise ValueError(f"global batch {batch_size} does not divide over {process_count} processes")
    ds = index_batches(len(source), batch_size, seed, groups)
    builder = MotionBatchBuilder(source, tuple(frame_counts), tuple(strides), scale_aug, shift_aug,
                                 process_index, process_count)
    return ds.random_map(builder, seed=seed)


def make_iterator(batches: grain.MapDataset, num_threads: int = 2, prefetch: int = 4,
                  num_workers: int = 0):
    """A checkpointable iterator over `batches` that prepares them on background threads.

    `num_workers > 0` builds batches in that many worker processes instead (Grain
    `mp_prefetch`); the iterator state still restores to exactly the same next batch.
    """
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    ds = batches.to_iter_dataset(options)
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; use their defaults
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch))
    return iter(ds)
