"""Random-access source over the ArrayRecord shards `python -m data_pipeline.build` writes.

A built dataset is a folder: `manifest.json` (counts, inputs, per-record index, statistics),
`mean.npy`/`std.npy` (per-joint statistics of the train split), and one subfolder of
`.array_record` shards per split (`train/`, `val/`): clip records (`SPLIT-*`) and, when video
frames were stored, one frame per record (`SPLIT-frames-*`). `ShardSource(folder, split)` reads
one split through Grain's `ArrayRecordDataSource`; `folder` may also name the split subfolder
itself (`DATASET/val`). Items are `ShardClip`s: a `MotionClip` plus the record's other fields;
their `frames` are read only where sliced. Frame counts and video frame sizes come from the
manifest, so the loader can pick windows and group records without reading them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain
import numpy as np

from mtvjax.data.motion_files import MotionClip
from mtvjax.data.motion_records import decode_record

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class StoredFrames:
    """A clip's stored video frames, uint8 `[count, H, W, 3]`, read from the frame shards only
    where indexed: `frames[start:stop:step]` reads just those frames."""

    records: object
    first: int
    count: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, self.height, self.width, 3)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, item) -> np.ndarray:
        positions = np.arange(self.count)[item]
        if positions.ndim == 0:
            return self[int(positions):int(positions) + 1][0]
        data = self.records.__getitems__([self.first + int(p) for p in positions])
        out = np.empty((len(positions), self.height, self.width, 3), np.uint8)
        for k, frame in enumerate(data):
            out[k] = np.frombuffer(frame, np.uint8).reshape(self.height, self.width, 3)
        return out

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)


@dataclasses.dataclass(frozen=True)
class ShardClip(MotionClip):
    """A clip read from shards; `frames` (`StoredFrames`) when the build stored video frames."""

    key: str = ""
    fps: float = 30.0
    convention: str = "smpl"
    frame_indices: np.ndarray | None = None
    confidence: np.ndarray | None = None
    frames: StoredFrames | None = None


def read_manifest(root: str | Path) -> dict:
    """The manifest of a built dataset folder, with its version checked."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root}: not a built dataset (no {MANIFEST}); build it with "
                                "`python -m data_pipeline.build --config configs/data/NAME.py`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('manifest_version')}, this reader "
                         f"knows {MANIFEST_VERSION}; rebuild the dataset")
    return manifest


def resolve_split(path: str | Path, split: str) -> tuple[Path, str]:
    """(dataset folder, split) from `DATASET` plus `split`, or from `DATASET/SPLIT`."""
    path = Path(path)
    if not (path / MANIFEST).is_file() and (path.parent / MANIFEST).is_file():
        return path.parent, path.name
    return path, split


class ShardSource:
    """One split of a built dataset, clips with fewer than `min_frames` frames left out."""

    def __init__(self, path: str | Path, split: str = "train", min_frames: int = 1):
        self.root, self.split = resolve_split(path, split)
        self.manifest = read_manifest(self.root)
        splits = self.manifest["splits"]
        if self.split not in splits:
            raise ValueError(f"{self.root}: no split {self.split!r}; it has {sorted(splits)}")
        entries = self.manifest["index"][self.split]
        files = [str(self.root / shard["file"]) for shard in splits[self.split]["shards"]]
        self._records = grain.sources.ArrayRecordDataSource(files) if files else []
        frame_files = [str(self.root / shard["file"]) for shard in splits[self.split]["frame_shards"]]
        self._frames = grain.sources.ArrayRecordDataSource(frame_files) if frame_files else None
        if len(self._records) != len(entries):
            raise ValueError(f"{self.root}: split {self.split!r} shards hold {len(self._records)} "
                             f"records, the manifest lists {len(entries)}; rebuild the dataset")
        keep = [i for i, e in enumerate(entries) if e["frames"] >= min_frames]
        self.skipped = [f"{e['source_id']}: {e['frames']} frames, fewer than the {min_frames} "
                        "requested" for e in entries if e["frames"] < min_frames]
        if not keep:
            raise ValueError(f"{self.root}: split {self.split!r} has no clip of at least "
                             f"{min_frames} frames ({len(entries)} records)")
        self._positions = np.array(keep, np.int64)
        self._entries = [entries[i] for i in keep]

    def __len__(self) -> int:
        return len(self._positions)

    def num_frames(self, index: int) -> int:
        return int(self._entries[int(index)]["frames"])

    def frame_sizes(self) -> list[tuple[int, int] | None]:
        """(height, width) of each clip's stored video frames (None: none); `groups` for batching."""
        return [None if e["frame_size"] is None else tuple(e["frame_size"]) for e in self._entries]

    def stats(self) -> dict[str, np.ndarray]:
        """The per-joint mean and std `[24, 3]` of the train split, as the build wrote them."""
        return {key: np.load(self.root / f"{key}.npy", allow_pickle=False) for key in ("mean", "std")}

    def __getitem__(self, index: int) -> ShardClip:
        rec = decode_record(self._records[int(self._positions[int(index)])])
        video, frames = rec["video_frames"], None
        if video is not None:
            frames = StoredFrames(self._frames, video["first"], len(rec["motion"]), *video["size"])
        return ShardClip(motion=rec["motion"], name=rec["source_id"], video_path=rec["video_path"],
                         key=rec["key"], fps=rec["fps"], convention=rec["convention"],
                         frame_indices=rec["frame_indices"], confidence=rec["confidence"],
                         frames=frames)
