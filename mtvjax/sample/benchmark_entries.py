"""The entries of a batch generation (`mtvjax generate`): a list file or a benchmark folder.

An entry is one clip to generate: an `id` (the output name), a `motion` file (.pkl / .npy / .npz,
as `mtvjax animate --motion` takes), and optionally a `reference` image, the driving `video` (an
mp4 or a folder of frame images; frame k matches pose frame k), the `clip` index in a multi-clip
motion file, the `start` frame in the pose file, a `prompt` (17B) and a `seed`. Without a
reference the clip's first driving frame (the video frame of the first generated frame) is the
reference; without a video the motion file's own video path (MTVCrafter pickles name one) is
used. The driving video also gives the ground-truth frames.

List file — JSONL (one object per line) or CSV (a header row naming the columns):

    {"id": "dance_01", "reference": "refs/a.png", "motion": "poses/01.pkl", "clip": 0,
     "start": 0, "video": "videos/01.mp4", "prompt": "...", "seed": 42}

`id` and `motion` are required; relative paths are relative to the list file's folder; empty
CSV cells are absent fields.

Benchmark folder (the TikTok / Fashion test layout as this project stores it) — one sub-folder
per test clip, named by its id:

    ROOT/<id>/images/        the clip's frames (0001.png, ...; natural name order) = the video
    ROOT/<id>/<pose file>    exactly one .pkl / .npy / .npz: its SMPL joints, one per frame
    ROOT/<id>/reference.png  optional reference image (.png / .jpg); default: the first frame
    ROOT/<id>/prompt.txt     optional prompt (17B)

`check_entries` validates ids (unique, safe as file names) and that every named file exists,
with one error naming the list file and line (or the folder) of each bad entry.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path

from mtvjax.data.motion_files import MOTION_SUFFIXES

FIELDS = ("id", "motion", "reference", "video", "clip", "start", "prompt", "seed")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FRAMES_FOLDER = "images"


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str
    motion: str
    where: str                    # "list.jsonl:3" or the clip folder, for error messages
    reference: str | None = None
    video: str | None = None
    clip: int | None = None       # None: the config's motion.clip
    start: int | None = None      # None: the config's motion.start
    prompt: str | None = None     # None: the config's prompt
    seed: int | None = None       # None: the config's seed


def _integer(value, field: str, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or str(number) != str(value).strip() or number < 0:
        raise ValueError(f"{where}: {field}={value!r} is not a non-negative integer")
    return number


def _entry(row: dict, where: str, folder: Path) -> Entry:
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (fields: "
                         f"{', '.join(FIELDS)})")
    row = {k: v for k, v in row.items() if v is not None and v != ""}
    for field in ("id", "motion"):
        if field not in row:
            raise ValueError(f"{where}: the required field {field!r} is missing")
    path = lambda key: None if key not in row else str(folder / os.path.expanduser(str(row[key])))
    return Entry(id=str(row["id"]), motion=path("motion"), where=where,
                 reference=path("reference"), video=path("video"),
                 clip=_integer(row.get("clip"), "clip", where),
                 start=_integer(row.get("start"), "start", where),
                 prompt=None if "prompt" not in row else str(row["prompt"]),
                 seed=_integer(row.get("seed"), "seed", where))


def _read_jsonl(path: Path) -> list[Entry]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: not a JSON object")
            entries.append(_entry(row, where, path.parent))
    return entries


def _read_csv(path: Path) -> list[Entry]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"{path}: empty CSV (need a header row: {', '.join(FIELDS)})")
        entries = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise ValueError(f"{where}: more cells than header columns")
            entries.append(_entry(row, where, path.parent))
        return entries


def _folder_entry(clip: Path) -> Entry:
    poses = sorted(p for p in clip.iterdir() if p.suffix.lower() in MOTION_SUFFIXES)
    if len(poses) != 1:
        raise ValueError(f"{clip}: need exactly one pose file ({', '.join(MOTION_SUFFIXES)}), "
                         f"found {len(poses)}")
    refs = [clip / f"reference{s}" for s in IMAGE_SUFFIXES if (clip / f"reference{s}").is_file()]
    prompt = clip / "prompt.txt"
    return Entry(id=clip.name, motion=str(poses[0]), where=str(clip),
                 reference=str(refs[0]) if refs else None, video=str(clip / FRAMES_FOLDER),
                 prompt=prompt.read_text(encoding="utf-8").strip() if prompt.is_file() else None)


def read_entries(source) -> list[Entry]:
    """Entries of a list file (.jsonl / .csv) or a benchmark folder, in their order."""
    source = Path(os.path.expanduser(str(source)))
    if not str(source) or not source.exists():
        raise FileNotFoundError(f"{source}: entries not found (a .jsonl / .csv list file or a "
                                "benchmark folder; see mtvjax/sample/benchmark_entries.py)")
    if source.is_dir():
        clips = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        entries = [_folder_entry(c) for c in clips]
    elif source.suffix.lower() == ".jsonl":
        entries = _read_jsonl(source)
    elif source.suffix.lower() == ".csv":
        entries = _read_csv(source)
    else:
        raise ValueError(f"{source}: entries must be a .jsonl or .csv list file or a folder")
    if not entries:
        raise ValueError(f"{source}: no entries")
    return entries


def check_entries(entries: list[Entry]) -> None:
    """Ids unique and safe as file names, named files present; raises on the first bad entry."""
    seen = {}
    for e in entries:
        if not SAFE_ID.fullmatch(e.id):
            raise ValueError(f"{e.where}: id {e.id!r} is not a safe file name (letters, digits, "
                             "'.', '_', '-'; not starting with '.', '_' or '-'; at most 128)")
        if e.id in seen:
            raise ValueError(f"{e.where}: id {e.id!r} already used at {seen[e.id]}")
        seen[e.id] = e.where
        if not os.path.exists(e.motion):
            raise FileNotFoundError(f"{e.where}: motion {e.motion} not found")
        if e.reference is not None and not os.path.isfile(e.reference):
            raise FileNotFoundError(f"{e.where}: reference image {e.reference} not found")
        if e.video is not None and not os.path.exists(e.video):
            raise FileNotFoundError(f"{e.where}: driving video {e.video} not found")
