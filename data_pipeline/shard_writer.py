"""Writing a dataset folder: encoded records into ArrayRecord shards, the train/val split by
clip, and the atomic replacement of a previous build.

A clip's split is a pure function of its key and the build seed (a hash, not its position), so
adding or removing other clips never moves it, and all frames of a clip stay in one split.
Shards hold at most `shard_records` records each, one record per ArrayRecord group so the
loader reads any record without decoding its neighbours; they are named
`NAME-00000-of-00003.array_record` (NAME: the split, or `SPLIT-frames` for video frames) once
the split is complete.

`write_dataset` writes the whole folder (shards, statistics, `manifest.json`) beside the output
and renames it into place at the end, so a stopped build leaves the previous dataset (or none),
never a half-written one; it replaces only an earlier build (`data_pipeline.output_folder`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from array_record.python.array_record_module import ArrayRecordWriter

from mtvjax.data.shard_source import MANIFEST

from data_pipeline.output_folder import check_output, make_temp, move_into_place, remove_stale

SPLITS = ("train", "val")
ARRAY_RECORD_OPTIONS = "group_size:1"


def clip_split(key: str, seed: int, val_fraction: float) -> str:
    """'val' for a `val_fraction` share of keys (by a seeded hash of the key), else 'train'."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
    return "val" if int.from_bytes(digest[:8], "little") / 2.0 ** 64 < val_fraction else "train"


class SplitWriter:
    """Appends records to numbered shards `NAME-*` in `folder`."""

    def __init__(self, folder: Path, name: str, shard_records: int):
        if shard_records < 1:
            raise ValueError(f"shard size must be at least 1 record, got {shard_records}")
        self.folder, self.name, self.shard_records = Path(folder), name, shard_records
        self._counts: list[int] = []
        self._writer = None

    def _path(self, shard: int, total: int | None = None) -> Path:
        suffix = "" if total is None else f"-of-{total:05d}"
        return self.folder / f"{self.name}-{shard:05d}{suffix}.array_record"

    def write(self, data: bytes) -> None:
        if self._writer is None or self._counts[-1] == self.shard_records:
            if self._writer is not None:
                self._writer.close()
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = ArrayRecordWriter(str(self._path(len(self._counts))), ARRAY_RECORD_OPTIONS)
            self._counts.append(0)
        self._writer.write(data)
        self._counts[-1] += 1

    def close(self, root: Path) -> list[dict]:
        """Closes the last shard, names all with their total; returns `{file, records}` per shard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shards = []
        for i, count in enumerate(self._counts):
            final = self._path(i, len(self._counts))
            self._path(i).rename(final)
            shards.append({"file": final.relative_to(root).as_posix(), "records": count})
        return shards


def write_dataset(output, kind: str, write: Callable[[Path], dict]) -> dict:
    """Builds the dataset folder `output`: `write(folder)` fills a fresh temporary folder beside
    it and returns the manifest, which is saved with `kind` as `manifest.json`; the folder then
    takes the place of `output` where `data_pipeline.output_folder` allows (checked before and
    after writing, so a refusal comes before the work). Returns the manifest."""
    out = Path(output).absolute()
    check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = make_temp(out)
    try:
        manifest = {**write(tmp), "kind": kind}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                                    encoding="utf-8")
        move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
