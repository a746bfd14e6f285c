"""Grain pipelines that turn a motion source into bucketed, augmented training batches.

Pipeline: clip indices → per-epoch seeded shuffle → per-process slice → batches of indices →
`MotionBatchBuilder` (one frame count and stride per batch, so each shape compiles once; random
window per clip; random scale/shift) → prefetching iterator. Every step is a pure function of
the seed and the element index, so the iterator state is one integer and a restored iterator
yields exactly the batches an uninterrupted one would.

A source is anything with `__len__` and `__getitem__(i) -> MotionClip`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from mtvjax.data.motion_files import MotionClip, load_clips
from mtvjax.data.synthetic import SyntheticMotionSource


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


@dataclasses.dataclass
class MotionBatchBuilder:
    """Builds one batch from a batch of clip indices; a Grain random map.

    One (frame count, stride) pair is drawn per batch. A clip too short for it is read at
    stride 1; if still too short it is replaced by a clip of the batch that fits and counted in
    the batch's `skipped` entry (if none fits, the frame count drops to the longest that does).
    """

    source: object
    frame_counts: Sequence[int]
    strides: Sequence[int] = (1,)
    scale_aug: float = 0.0
    shift_aug: float = 0.0

    def __call__(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        clips = [self.source[i] for i in indices]
        lengths = np.array([c.motion.shape[0] for c in clips])
        frames = int(rng.choice(self.frame_counts))
        stride = int(rng.choice(self.strides))
        fitting = [f for f in sorted(self.frame_counts) if f <= lengths.max()]
        if not fitting:
            raise ValueError(f"no clip of this batch has {min(self.frame_counts)} frames: "
                             f"{[c.name for c in clips]}")
        frames = min(frames, fitting[-1])
        fits = lengths >= frames
        skipped = 0
        windows = []
        for k, clip in enumerate(clips):
            if not fits[k]:
                clip = clips[int(rng.choice(np.flatnonzero(fits)))]
                skipped += 1
            step = stride if clip.motion.shape[0] >= (frames - 1) * stride + 1 else 1
            span = (frames - 1) * step + 1
            start = int(rng.integers(0, clip.motion.shape[0] - span + 1))
            windows.append(self._augment(clip.motion[start:start + span:step], rng))
        return {"motion": np.stack(windows).astype(np.float32),
                "skipped": np.array(skipped, np.int32)}

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
        return ClipListSource(clips), errors
    raise ValueError(f"unknown data.source {data_config.source!r}: use synthetic, pkl or npy")


def make_batches(source, batch_size: int, frame_counts: Sequence[int], strides: Sequence[int],
                 seed: int, scale_aug: float = 0.0, shift_aug: float = 0.0,
                 process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """An endless, random-access MapDataset of batches `{'motion', 'skipped'}`.

    Each process takes every `process_count`-th clip of the shuffled stream and builds batches
    of `batch_size` from them (its local share of the global batch).
    """
    ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
    if process_count > 1:
        ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=True)
    builder = MotionBatchBuilder(source, tuple(frame_counts), tuple(strides), scale_aug, shift_aug)
    return ds.random_map(builder, seed=seed)


def make_iterator(batches: grain.MapDataset, num_threads: int = 2, prefetch: int = 4):
    """A checkpointable iterator over `batches` that prepares them on background threads."""
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(options))
