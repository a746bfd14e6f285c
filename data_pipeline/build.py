"""Motion files → ArrayRecord shards with a manifest and statistics.

    python -m data_pipeline.build --config configs/data/NAME.py [--config.output=DIR ...]

Reads every input with `data_pipeline.readers.ingest` (bad files are reported in the manifest and
skipped), optionally resamples to `target_fps`, drops clips shorter than `min_frames`, splits
train/val by clip key, stores video frames when `video.store="pixels"`, writes the shards, then
computes per-joint statistics over the train split. Output (see `mtvjax.data.shard_source`):
`manifest.json`, `mean.npy`, `std.npy`, `train/*.array_record`, `val/*.array_record` (clip
records, and with stored pixels one record per video frame in `SPLIT-frames-*`).

Everything is written into a temporary folder beside `output` and renamed at the end, so a
stopped build leaves the previous dataset (or none), never a half-written one; an existing
`output` is replaced only when it is empty or an earlier build holding nothing else
(`data_pipeline.output_folder`). Inputs are read in sorted order and nothing time-dependent is
stored, so the same inputs give the same bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Iterator

import av
import grain
import numpy as np

from mtvjax.data.buckets import scale_buckets
from mtvjax.data.motion_records import decode_record, encode_record
from mtvjax.data.resample import resample_linear, resample_times
from mtvjax.data.shard_source import MANIFEST_VERSION
from mtvjax.data.stats import compute_stats

from data_pipeline.command import run_build_command
from data_pipeline.output_folder import MOTION_KIND
from data_pipeline.readers.ingest import iter_input_files, load_motion_file
from data_pipeline.readers.ingested_record import MotionRecord, add_frame_counts, make_record
from data_pipeline.readers.video import clip_frames
from data_pipeline.shard_writer import SPLITS, SplitWriter, clip_split, write_dataset

VIDEO_STORES = ("reference", "pixels")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def conform_fps(record: MotionRecord, target_fps: float) -> MotionRecord:
    """`record` at `target_fps` (0 keeps it): linear in time, video frame indices by nearest."""
    if not target_fps or abs(record.fps - target_fps) <= 1e-6 * target_fps:
        return record
    times = resample_times(record.num_frames, record.fps, target_fps)
    nearest = np.rint(times).astype(np.int64)
    conf = record.confidence
    return make_record(
        resample_linear(record.motion, record.fps, target_fps), target_fps, record.source_id,
        video_path=record.video_path, convention=record.convention,
        video_length=record.video_length, frame_indices=None if record.frame_indices is None else record.frame_indices[nearest],
        confidence=None if conf is None else resample_linear(conf, record.fps, target_fps))


def video_payload(record: MotionRecord, key: str, video, seed: int) -> np.ndarray | None:
    """What the record stores of its video besides the reference: pixels, or nothing (VAE
    latents are a separate build, `data_pipeline.video_latents`)."""
    if video.store == "reference" or record.video_path is None:
        return None
    if record.frame_indices is None:
        raise ValueError(f"{record.source_id}: has a video but no frame indices")
    return clip_frames(record.video_path, record.frame_indices,
                       scale_buckets(video.base_resolution), seed, key)


def _check_config(config) -> None:
    if config.video.store not in VIDEO_STORES:
        hint = (" (VAE latents of video windows are built by `python -m data_pipeline.latents "
                "--config configs/data/real_videos.py`; store pixels or the reference here)"
                if config.video.store == "latents" else "")
        raise ValueError(f"video.store must be one of {VIDEO_STORES}, got {config.video.store!r}{hint}")
    if not 0.0 <= config.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
    if not config.output:
        raise ValueError("config.output (the dataset folder to write) is empty")


def _input_files(inputs) -> list[tuple[str, str]]:
    """(path, key) of every input file, keys relative to the folder holding each input."""
    files, seen = [], set()
    for entry in inputs:
        base = os.path.dirname(os.path.abspath(entry))
        for path in iter_input_files(entry):
            absolute = os.path.abspath(path)
            if absolute not in seen:
                seen.add(absolute)
                files.append((path, os.path.relpath(absolute, base).replace(os.sep, "/")))
    return files


def _record_key(record: MotionRecord, path: str, file_key: str) -> str:
    sid = record.source_id
    return file_key + sid[len(path):] if sid.startswith(path) else f"{file_key}|{sid}"


@dataclasses.dataclass
class Report:
    """What a pass over the inputs found besides clips: files read, bad inputs, short clips, videos."""

    files: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    videos: set = dataclasses.field(default_factory=set)
    frame_decisions: dict = dataclasses.field(default_factory=dict)  # raw NLF per-frame rule


@dataclasses.dataclass(frozen=True)
class Clip:
    key: str
    split: str
    record: MotionRecord
    frames: np.ndarray | None


def iter_clips(config, report: Report) -> Iterator[Clip]:
    """Every usable clip of the inputs, in input order; the rest goes into `report`."""
    keys = set()
    for path, file_key in _input_files(config.inputs):
        row = {"path": file_key, "sha256": None, "records": 0}
        report.files.append(row)
        try:
            row["sha256"] = file_sha256(path)
            records = load_motion_file(path, **dict(config.ingest))
        except (ValueError, pickle.UnpicklingError, OSError) as e:
            report.errors.append({"path": path, "message": str(e)})
            continue
        add_frame_counts(report.frame_decisions, records)
        for record in records:
            key = _record_key(record, path, file_key)
            record = conform_fps(record, config.target_fps)
            if record.video_path is not None and os.path.isfile(record.video_path):
                report.videos.add(record.video_path)
            if key in keys:
                report.errors.append({"path": path, "message": f"{key}: a clip with this key was "
                                      "already read"})
                continue
            keys.add(key)
            if record.num_frames < config.min_frames:
                report.skipped.append({"key": key, "message": f"{record.num_frames} frames, fewer "
                                       f"than min_frames={config.min_frames}"})
                continue
            try:
                frames = video_payload(record, key, config.video, config.seed)
            except (ValueError, OSError, av.FFmpegError) as e:
                report.errors.append({"path": record.video_path, "message": f"{key}: {e}"})
                continue
            row["records"] += 1
            yield Clip(key, clip_split(key, config.seed, config.val_fraction), record, frames)


def _write_records(config, tmp: Path) -> dict:
    """Writes the splits' shards; returns the manifest without statistics."""
    writers = {s: SplitWriter(tmp / s, s, config.shard_records) for s in SPLITS}
    frame_writers = {s: SplitWriter(tmp / s, f"{s}-frames", config.video.shard_frames) for s in SPLITS}
    stored = {s: 0 for s in SPLITS}
    index = {s: [] for s in SPLITS}
    report = Report()
    for clip in iter_clips(config, report):
        record, frames, split = clip.record, clip.frames, clip.split
        video_frames = None
        if frames is not None:
            video_frames = {"kind": "pixels", "first": stored[split], "size": frames.shape[1:3]}
            for frame in frames:
                frame_writers[split].write(frame.tobytes())
            stored[split] += len(frames)
        writers[split].write(encode_record(
            key=clip.key, source_id=record.source_id, motion=record.motion, fps=record.fps,
            convention=record.convention, video_path=record.video_path,
            frame_indices=record.frame_indices, confidence=record.confidence,
            video_frames=video_frames))
        index[split].append({
            "key": clip.key, "source_id": record.source_id, "frames": record.num_frames,
            "fps": record.fps, "convention": record.convention, "video_path": record.video_path,
            "frame_size": None if frames is None else list(frames.shape[1:3])})
    splits = {}
    for s in SPLITS:
        entries = index[s]
        splits[s] = {"records": len(entries), "frames": sum(e["frames"] for e in entries),
                     "shards": writers[s].close(tmp), "frame_shards": frame_writers[s].close(tmp),
                     "conventions": _count(e["convention"] for e in entries),
                     "with_video": sum(e["video_path"] is not None for e in entries),
                     "with_frames": sum(e["frame_size"] is not None for e in entries)}
    videos = [{"path": v, "sha256": file_sha256(v)} for v in sorted(report.videos)]
    overall = hashlib.sha256("".join(f"{r['path']}\t{r['sha256']}\n" for r in report.files + videos)
                             .encode("utf-8")).hexdigest()
    settings = {k: v for k, v in json.loads(config.to_json()).items() if k != "output"}
    return {"manifest_version": MANIFEST_VERSION, "name": config.name, "config": settings,
            "inputs": {"sha256": overall, "files": report.files, "videos": videos},
            "errors": report.errors, "skipped": report.skipped,
            "frame_decisions": report.frame_decisions, "splits": splits, "index": index}


def _count(values) -> dict:
    counts = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items()))


def _statistics(tmp: Path, manifest: dict) -> dict:
    """Per-joint mean/std over the train split's frames (read back from its shards)."""
    files = [str(tmp / shard["file"]) for shard in manifest["splits"]["train"]["shards"]]
    if not files:
        reasons = "; ".join(e["message"] for e in manifest["errors"][:5])
        raise ValueError(f"no clip went to the train split, nothing to build ({reasons or 'no inputs'})")
    records = grain.sources.ArrayRecordDataSource(files)
    stats = compute_stats(decode_record(records[i])["motion"] for i in range(len(records)))
    for key, value in stats.items():
        np.save(tmp / f"{key}.npy", value)
    return {"frames": manifest["splits"]["train"]["frames"], "mean_path": "mean.npy",
            "std_path": "std.npy", "rope_mean_joints": stats["mean"].tolist()}


def build(config) -> dict:
    """Builds the dataset `config` describes into `config.output`; returns its manifest."""
    _check_config(config)

    def write(folder: Path) -> dict:
        manifest = _write_records(config, folder)
        manifest["statistics"] = _statistics(folder, manifest)
        return manifest

    return write_dataset(config.output, MOTION_KIND, write)


def report(config, manifest: dict) -> None:
    """Prints the bad inputs (stderr) and one line of counts."""
    for error in manifest["errors"]:
        print(f"skipped bad input {error['path']}: {error['message']}", file=sys.stderr)
    counts = ", ".join(f"{s}: {v['records']} clips / {v['frames']} frames"
                       for s, v in manifest["splits"].items())
    print(f"built {config.output} ({counts}; {len(manifest['errors'])} bad input(s), "
          f"{len(manifest['skipped'])} short clip(s) skipped)")


def main() -> None:
    run_build_command(build, report, "python -m data_pipeline.build", __doc__,
                      "Dataset config, e.g. configs/data/cmu_bvh.py.")


if __name__ == "__main__":
    main()
