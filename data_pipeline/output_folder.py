"""Where a build may put its dataset: what it may replace, and the leftovers it may remove.

A build writes `.NAME.tmp-PID` beside its output `NAME` and renames it into place at the end
(`shard_writer.write_dataset`). An existing `NAME` is replaced only when it is an empty folder,
or a dataset mtvjax built: its `manifest.json` names one of `KINDS` and an integer
`manifest_version`, and the folder holds nothing but what that manifest lists (the manifest,
shards, statistics, a text cache). Anything else (a file, a symbolic link, a folder with other
contents) is refused with one line naming the folder and its first few other entries, and nothing
is deleted. A `.NAME.tmp-PID` folder left by a killed build is removed only once process PID is
gone, and a `.NAME.old-PID` one (a killed replacement) only when it is a dataset as above.
Deleting never follows a symbolic link.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from mtvjax.data.latent_shard_source import KIND as LATENT_KIND
from mtvjax.data.shard_source import MANIFEST
from mtvjax.data.text_embeddings import INDEX
from mtvjax.errors import UserError

MOTION_KIND = "motion_shards"
KINDS = (MOTION_KIND, LATENT_KIND)
SHOWN = 5          # entries a refusal names


class OutputFolderError(UserError, FileExistsError):
    """The output exists and is not something a build may replace."""


def temp_folder(out: Path, role: str = "tmp") -> Path:
    """`.NAME.ROLE-PID` beside `out` for this process."""
    return out.parent / f".{out.name}.{role}-{os.getpid()}"


def _names(entries: list[str]) -> str:
    more = f" and {len(entries) - SHOWN} more" if len(entries) > SHOWN else ""
    return ", ".join(entries[:SHOWN]) + more


def _own_manifest(folder: Path) -> tuple[dict | None, str]:
    """(the manifest of the dataset mtvjax built in `folder`, "") or (None, why it is not one)."""
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None, f"no {MANIFEST}"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None, f"{MANIFEST} is not JSON"
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind not in KINDS or not isinstance(manifest.get("manifest_version"), int):
        return None, f"{MANIFEST} has kind {kind!r}, not one of {KINDS}"
    return manifest, ""


def _text_cache_files(root: Path, folder: str) -> set[str]:
    """The text cache's index and the shards it names."""
    files = {f"{folder}/{INDEX}"}
    try:
        index = json.loads((root / folder / INDEX).read_text(encoding="utf-8"))
        files.update(f"{folder}/{e['shard']}" for e in index["entries"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass                                  # then its shards count as other files
    return files


def listed_files(manifest: dict, root: Path) -> set[str]:
    """'/'-separated paths, relative to `root`, of the files `manifest` says the dataset holds."""
    files = {MANIFEST}
    for split in manifest.get("splits", {}).values():
        files.update(s["file"] for s in split.get("shards", []) + split.get("frame_shards", []))
    stats = manifest.get("statistics") or {}
    files.update(stats[k] for k in ("mean_path", "std_path") if stats.get(k))
    text = manifest.get("text") or {}
    if text.get("folder"):
        files |= _text_cache_files(root, text["folder"])
    return files


def other_entries(root: Path, listed: set[str]) -> list[str]:
    """Entries under `root` that are neither a listed regular file nor a folder holding one
    (a symbolic link always is one); a folder of other things is named once, with a '/'."""
    folders = {p.rsplit("/", 1)[0] for p in listed if "/" in p}
    folders |= {f.rsplit("/", i)[0] for f in list(folders) for i in range(1, f.count("/") + 1)}
    found = []

    def walk(folder: str, prefix: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if rel in folders:
                    walk(entry.path, rel + "/")
                else:
                    found.append(rel + "/")
            elif not (entry.is_file(follow_symlinks=False) and rel in listed):
                found.append(rel)

    walk(str(root), "")
    return found


def check_output(out: Path) -> None:
    """Raises `OutputFolderError` unless a build may put a dataset at `out`: nothing there, an
    empty folder, or a dataset mtvjax built that holds nothing its manifest does not list."""
    if out.is_symlink():
        raise OutputFolderError(f"{out}: is a symbolic link; give the dataset folder itself")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"{out}: is a file, not a dataset folder; choose another output")
    entries = sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "")
                     for e in os.scandir(out))
    if not entries:
        return
    manifest, why = _own_manifest(out)
    if manifest is None:
        raise OutputFolderError(f"{out}: exists and is not a built dataset of mtvjax ({why}; holds "
                                f"{_names(entries)}); not replacing it: choose another output "
                                "or remove it yourself")
    try:
        listed = listed_files(manifest, out)
    except (KeyError, TypeError, AttributeError) as e:
        raise OutputFolderError(f"{out / MANIFEST}: unreadable file list ({e!r}); not replacing "
                                f"{out}: choose another output or remove it yourself") from None
    other = other_entries(out, listed)
    if other:
        raise OutputFolderError(f"{out}: holds files its {manifest['kind']} manifest does not "
                                f"list ({_names(other)}); not replacing it: move them out or "
                                "choose another output")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def remove_stale(out: Path) -> list[Path]:
    """Removes the `.NAME.tmp-PID` / `.NAME.old-PID` folders of builds of `out` whose process
    is gone (`.old` ones only when they pass `check_output`); returns them."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-([1-9][0-9]{{0,9}})")
    removed = []
    for entry in sorted(os.scandir(out.parent), key=lambda e: e.name):
        match = pattern.fullmatch(entry.name)
        if not (match and entry.is_dir(follow_symlinks=False)
                and _process_gone(int(match.group(2)))):
            continue
        if match.group(1) == "old":
            try:
                check_output(Path(entry.path))
            except OutputFolderError:
                continue
        shutil.rmtree(entry.path)
        removed.append(Path(entry.path))
    return removed


def make_temp(out: Path) -> Path:
    """Creates this process's temporary folder for `out` (refused while one exists)."""
    tmp = temp_folder(out)
    try:
        tmp.mkdir()
    except FileExistsError:
        raise OutputFolderError(f"{tmp}: exists: another build of {out} is running in this "
                                f"process ({os.getpid()}); wait for it to finish") from None
    return tmp


def move_into_place(tmp: Path, out: Path) -> None:
    """Renames the finished `tmp` to `out`, replacing what `check_output` (run again now)
    allows there."""
    check_output(out)
    if out.exists():
        old = temp_folder(out, "old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
