"""A build replaces only what mtvjax wrote: its own earlier datasets, empty folders and the
temporary folders of killed builds; anything else is refused with one line and left untouched."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from data_pipeline.latents import build as build_latents
from data_pipeline.output_folder import (KINDS, MOTION_KIND, OutputFolderError, check_output,
                                         remove_stale)
from data_pipeline.shard_writer import SplitWriter, write_dataset
from mtvjax.config import load_config
from mtvjax.errors import EXIT_DATA


def _write_tiny(folder):
    """A tiny dataset: one shard of two records and the statistics files."""
    writer = SplitWriter(folder / "train", "train", 4)
    writer.write(b"a")
    writer.write(b"b")
    np.save(folder / "mean.npy", np.zeros(3, np.float32))
    np.save(folder / "std.npy", np.ones(3, np.float32))
    return {"manifest_version": 1, "splits": {"train": {"shards": writer.close(folder)},
                                              "val": {"shards": []}},
            "statistics": {"mean_path": "mean.npy", "std_path": "std.npy"}}


def _snapshot(folder):
    """{relative path: bytes or '<dir>' or '-> target'} of everything under `folder`."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[rel] = "<dir>"
            else:
                found[rel] = open(path, "rb").read()
    return found


def _foreign(folder):
    """A user's folder that happens to hold a manifest.json."""
    (folder / "photos").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"version": 3, "files": ["a.jpg"]}))
    (folder / "notes.txt").write_text("my notes")
    (folder / "photos" / "a.jpg").write_bytes(b"\xff\xd8jpeg")
    return folder


def test_a_foreign_folder_with_a_manifest_is_refused_and_kept(tmp_path):
    out = _foreign(tmp_path / "ds")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputFolderError, match="not a built dataset") as error:
        write_dataset(out, MOTION_KIND, _write_tiny)
    message = str(error.value)
    assert str(out) in message and "notes.txt" in message and "photos/" in message
    assert "\n" not in message
    assert _snapshot(tmp_path) == before


def test_an_mtvjax_build_is_replaced_on_rebuild(tmp_path):
    out = tmp_path / "ds"
    first = write_dataset(out, MOTION_KIND, _write_tiny)
    assert first["kind"] == MOTION_KIND in KINDS
    assert json.loads((out / "manifest.json").read_text())["kind"] == MOTION_KIND
    (out / "train" / "train-00000-of-00001.array_record").write_bytes(b"stale")
    write_dataset(out, MOTION_KIND, _write_tiny)
    assert (out / "train" / "train-00000-of-00001.array_record").read_bytes() != b"stale"
    assert sorted(os.listdir(tmp_path)) == ["ds"]        # no temporary or old folder left


def test_an_mtvjax_build_with_a_user_file_is_refused(tmp_path):
    out = tmp_path / "ds"
    write_dataset(out, MOTION_KIND, _write_tiny)
    (out / "train" / "mine.txt").write_text("keep me")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputFolderError, match=r"does not list \(train/mine.txt\)"):
        write_dataset(out, MOTION_KIND, _write_tiny)
    assert _snapshot(tmp_path) == before


def _write_with_text_cache(folder):
    manifest = _write_tiny(folder)
    cache = folder / "text_cache"
    cache.mkdir()
    (cache / "embeddings-00000-of-00001.array_record").write_bytes(b"e")
    (cache / "index.json").write_text(json.dumps(
        {"entries": {"k": {"shard": "embeddings-00000-of-00001.array_record"}}}))
    return {**manifest, "text": {"folder": "text_cache"}}


def test_a_text_cache_the_manifest_names_is_part_of_the_build(tmp_path):
    out = tmp_path / "ds"
    write_dataset(out, MOTION_KIND, _write_with_text_cache)
    write_dataset(out, MOTION_KIND, _write_with_text_cache)
    (out / "text_cache" / "extra.bin").write_bytes(b"x")
    with pytest.raises(OutputFolderError, match="text_cache/extra.bin"):
        write_dataset(out, MOTION_KIND, _write_with_text_cache)
    assert (out / "text_cache" / "extra.bin").read_bytes() == b"x"


def test_a_symlink_inside_a_build_is_refused_and_not_followed(tmp_path):
    out, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    write_dataset(out, MOTION_KIND, _write_tiny)
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    (out / "link").symlink_to(elsewhere)
    before = _snapshot(tmp_path)
    with pytest.raises(OutputFolderError, match="link"):
        write_dataset(out, MOTION_KIND, _write_tiny)
    assert _snapshot(tmp_path) == before


def test_an_empty_folder_is_used_and_a_file_or_link_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_dataset(empty, MOTION_KIND, _write_tiny)
    assert (empty / "manifest.json").is_file()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputFolderError, match="is a file"):
        write_dataset(tmp_path / "file", MOTION_KIND, _write_tiny)
    assert (tmp_path / "file").read_text() == "not a folder"
    (tmp_path / "link").symlink_to(empty)
    with pytest.raises(OutputFolderError, match="symbolic link"):
        check_output(tmp_path / "link")


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_folders_of_dead_builds_are_removed(tmp_path):
    out = tmp_path / "ds"
    dead, live = tmp_path / f".ds.tmp-{_dead_pid()}", tmp_path / f".ds.tmp-{os.getpid()}"
    other = tmp_path / f".ds.tmp-{_dead_pid()}x"              # not the pattern exactly
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "part.array_record").write_bytes(b"partial")
    assert remove_stale(out) == [dead]
    assert not dead.exists() and live.is_dir() and other.is_dir()
    # this process's own folder is a build in progress here: refused, not deleted
    with pytest.raises(OutputFolderError, match="running in this process"):
        write_dataset(out, MOTION_KIND, _write_tiny)
    assert (live / "part.array_record").read_bytes() == b"partial" and not out.exists()


def test_a_stale_old_folder_is_removed_only_when_it_is_a_build(tmp_path):
    built, user = tmp_path / f".ds.old-{_dead_pid()}", tmp_path / f".ds.old-{_dead_pid()}"
    write_dataset(built, MOTION_KIND, _write_tiny)
    _foreign(user)
    assert remove_stale(tmp_path / "ds") == [built]
    assert user.is_dir() and (user / "notes.txt").read_text() == "my notes"


def _latent_config(output, **overrides):
    config = load_config(f"{REPO_ROOT / 'configs' / 'data' / 'synthetic_latents.py'}:tiny")
    config.motion.synthetic_sequences = 6
    config.output = str(output)
    config.update(overrides)
    return config


def test_latent_build_refuses_a_user_folder_then_rebuilds_its_own(tmp_path):
    out = _foreign(tmp_path / "user")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputFolderError):
        build_latents(_latent_config(out))
    assert _snapshot(tmp_path) == before
    own = tmp_path / "latents"
    first = build_latents(_latent_config(own))
    assert first["kind"] in KINDS
    second = build_latents(_latent_config(own, seed=1))
    on_disk = json.loads((own / "manifest.json").read_text())
    assert on_disk["config"]["seed"] == second["config"]["seed"] == 1


def test_cli_refusal_is_one_line(tmp_path):
    out = _foreign(tmp_path / "user")
    before = _snapshot(tmp_path)
    config = f"{REPO_ROOT / 'configs' / 'data' / 'synthetic_latents.py'}:tiny"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("MTVJAX_VERBOSE", None)
    result = subprocess.run([sys.executable, "-m", "data_pipeline.latents", "--config", config,
                             f"--config.output={out}"], capture_output=True, text=True,
                            timeout=300, env=env, cwd=REPO_ROOT)
    assert result.returncode == EXIT_DATA, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(out) in lines[0] and "notes.txt" in lines[0], lines
    assert _snapshot(tmp_path) == before
