"""Reading a built MV-DiT latent dataset: its manifest and one split's latent records.

A built latent dataset (`python -m data_pipeline.latents`) is a folder with `manifest.json`
(`kind: "mvdit_latents"`, per-record index with the shapes), `mean.npy`/`std.npy` of the motion
(the mean is the dataset-mean joints of the 7B's motion RoPE), and `train/`, `val/` ArrayRecord
shards of latent records (`mtvjax.data.latent_records`). `LatentShardSource` reads one split;
items are decoded record dicts, and `shape_key` groups them by latent shape without reading them.
"""
from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np

from mtvjax.data.latent_records import decode_latent_record
from mtvjax.data.shard_source import MANIFEST

KIND = "mvdit_latents"
MANIFEST_VERSION = 1


def read_latent_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root}: not a built latent dataset (no {MANIFEST}); build one "
                                "with `python -m data_pipeline.latents --config "
                                "configs/data/NAME.py`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("kind") != KIND:
        raise ValueError(f"{root}: a {manifest.get('kind', 'motion')!r} dataset, not MV-DiT "
                         "latents; build latent shards with `python -m data_pipeline.latents`")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('manifest_version')}, this "
                         f"reader knows {MANIFEST_VERSION}; rebuild the dataset")
    return manifest


class LatentShardSource:
    """One split of a built latent dataset (`root` or `root/SPLIT`), items as decoded dicts."""

    def __init__(self, path: str | Path, split: str = "train"):
        path = Path(path)
        if not (path / MANIFEST).is_file() and (path.parent / MANIFEST).is_file():
            path, split = path.parent, path.name
        self.root, self.split = path, split
        self.manifest = read_latent_manifest(path)
        if split not in self.manifest["splits"]:
            raise ValueError(f"{path}: no split {split!r}; it has "
                             f"{sorted(self.manifest['splits'])}")
        info = self.manifest["splits"][split]
        self._entries = self.manifest["index"][split]
        if not self._entries:
            raise ValueError(f"{path}: split {split!r} is empty")
        files = [str(path / s["file"]) for s in info["shards"]]
        self._records = grain.sources.ArrayRecordDataSource(files)
        if len(self._records) != len(self._entries):
            raise ValueError(f"{path}: split {split!r} shards hold {len(self._records)} records, "
                             f"the manifest lists {len(self._entries)}; rebuild the dataset")

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict:
        return decode_latent_record(self._records[int(index)])

    def shape_key(self, index: int) -> tuple:
        return tuple(self._entries[int(index)]["latent_shape"][:3])

    def stats(self) -> dict[str, np.ndarray]:
        return {k: np.load(self.root / f"{k}.npy", allow_pickle=False) for k in ("mean", "std")}
