"""Building shards from the shared NLF sample and CMU BVH files, and training 4DMoT from them."""
import hashlib
import os
import pickle

import numpy as np
import pytest

import data_pipeline.build as build_module
from conftest import REPO_ROOT, load_config
from data_pipeline.build import build
from data_pipeline.readers.ingest import scan_inputs
from mtvjax.config import load_config as load_config_file
from mtvjax.data.shard_source import ShardSource
from mtvjax.data.stats import compute_stats
from mtvjax.train.fourdmot_trainer import train
from mtvjax.train.metric_writer import read_metrics
from test_train_4dmot import OVERRIDES


def data_config(inputs, output):
    config = load_config_file(str(REPO_ROOT / "configs" / "data" / "cmu_bvh.py"))
    config.name = "shared"
    config.inputs = tuple(str(p) for p in inputs)
    config.output = str(output)
    return config


def _files(folder):
    return {os.path.relpath(os.path.join(root, name), folder):
            hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for root, _, names in os.walk(folder) for name in names}


@pytest.fixture(scope="module")
def built(mtvcrafter_sample, cmu_bvh, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    bad = root / "bad"
    bad.mkdir()
    (bad / "garbage.pkl").write_bytes(b"this is not a pickle")
    (bad / "code.pkl").write_bytes(pickle.dumps(os.system))
    np.save(bad / "nan.npy", np.full((50, 24, 3), np.nan, np.float32))
    np.save(bad / "short.npy", np.ones((20, 24, 3), np.float32))
    inputs = [mtvcrafter_sample / "sampled_data.pkl", cmu_bvh, bad]
    manifest = build(data_config(inputs, root / "ds"))
    build(data_config(inputs, root / "again"))
    return root, inputs, manifest


def test_manifest_counts_inputs_errors_and_splits(built):
    root, _, manifest = built
    splits = manifest["splits"]
    assert splits["train"]["records"] + splits["val"]["records"] == 3 + 24
    assert splits["val"]["records"] > 0
    conventions = {k: splits["train"]["conventions"].get(k, 0) + splits["val"]["conventions"].get(k, 0)
                   for k in ("smpl", "mocap")}
    assert conventions == {"smpl": 3, "mocap": 24}
    assert splits["train"]["with_video"] + splits["val"]["with_video"] == 3
    bad = {os.path.basename(e["path"]): e["message"] for e in manifest["errors"]}
    assert set(bad) == {"garbage.pkl", "code.pkl", "nan.npy"}
    assert "NaN" in bad["nan.npy"]
    assert [s["key"] for s in manifest["skipped"]] == ["bad/short.npy"]
    keys = {s: {e["key"] for e in manifest["index"][s]} for s in ("train", "val")}
    assert not keys["train"] & keys["val"] and "cmu_bvh/002_01.bvh" in keys["train"] | keys["val"]
    assert "sampled_data.pkl#2" in keys["train"] | keys["val"]
    rows = {r["path"]: r for r in manifest["inputs"]["files"]}
    assert rows["cmu_bvh/007_12.bvh"]["records"] == 1 and rows["bad/garbage.pkl"]["records"] == 0
    assert rows["cmu_bvh/007_12.bvh"]["sha256"] == hashlib.sha256(
        open(os.path.join(built[1][1], "007_12.bvh"), "rb").read()).hexdigest()
    assert len(manifest["inputs"]["videos"]) == 3
    for split in ("train", "val"):
        assert sum(s["records"] for s in splits[split]["shards"]) == splits[split]["records"]
        assert sum(e["frames"] for e in manifest["index"][split]) == splits[split]["frames"]


def test_statistics_are_those_of_the_train_frames(built):
    root, _, manifest = built
    train = ShardSource(root / "ds", "train")
    expected = compute_stats(train[i].motion for i in range(len(train)))
    np.testing.assert_array_equal(np.load(root / "ds" / "mean.npy"), expected["mean"])
    np.testing.assert_array_equal(np.load(root / "ds" / "std.npy"), expected["std"])
    np.testing.assert_array_equal(np.array(manifest["statistics"]["rope_mean_joints"], np.float32),
                                  expected["mean"])
    assert manifest["statistics"]["frames"] == sum(train.num_frames(i) for i in range(len(train)))


def test_rebuild_is_byte_identical(built):
    root = built[0]
    first = _files(root / "ds")
    assert {"manifest.json", "mean.npy", "std.npy"} <= set(first)
    assert any(name.startswith("train/train-00000-of-") for name in first)
    assert first == _files(root / "again")


def test_records_hold_what_ingestion_read(built, mtvcrafter_sample):
    root = built[0]
    records, _ = scan_inputs(mtvcrafter_sample / "sampled_data.pkl")
    clips = {}
    for split in ("train", "val"):
        try:
            source = ShardSource(root / "ds" / split)
        except ValueError:
            continue
        clips.update({source[i].name: source[i] for i in range(len(source))})
    for record in records:
        clip = clips[record.source_id]
        np.testing.assert_array_equal(clip.motion, record.motion)
        np.testing.assert_array_equal(clip.frame_indices, np.arange(record.num_frames))
        assert clip.fps == record.fps and clip.convention == "smpl"
        assert os.path.isfile(clip.video_path)


def test_a_failed_build_leaves_the_previous_dataset(built, monkeypatch):
    root, inputs, _ = built
    before = _files(root / "again")

    def fail(*args):
        raise RuntimeError("stopped mid-build")

    monkeypatch.setattr(build_module, "_statistics", fail)
    with pytest.raises(RuntimeError, match="mid-build"):
        build(data_config(inputs[:1], root / "again"))
    assert _files(root / "again") == before
    assert not [n for n in os.listdir(root) if n.startswith(".")]
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="not a built dataset"):
        build(data_config(inputs[:1], foreign))
    assert os.listdir(foreign) == ["keep.txt"]
    config = data_config(inputs[:1], root / "latents")
    config.video.store = "latents"
    with pytest.raises(ValueError, match="VAE"):
        build(config)


def test_dataset_configs_point_at_the_shared_data(shared_data, tmp_path):
    for name in ("mtvcrafter_sample.py", "cmu_bvh.py"):
        config = load_config_file(str(REPO_ROOT / "configs" / "data" / name))
        assert all(os.path.exists(p) for p in config.inputs), config.inputs
    config = load_config_file(str(REPO_ROOT / "configs" / "data" / "mtvcrafter_sample.py"))
    config.output = str(tmp_path / "sample")
    manifest = build(config)
    assert manifest["splits"]["train"]["records"] + manifest["splits"]["val"]["records"] == 3
    assert manifest["splits"]["val"]["records"] == 1   # a held-out clip for `data.val_path`


def test_4dmot_trains_from_the_shards(built, tmp_path):
    dataset = built[0] / "ds"
    config = load_config("4dmot.py", "tiny")
    for key, value in {**OVERRIDES, "train.num_steps": 4, "train.checkpoint_every": 4}.items():
        section, name = key.split(".")
        config[section][name] = value
    config.data.source, config.data.path = "shards", str(dataset)
    config.data.val_path = str(dataset / "val")
    config.normalization.mean_path = str(dataset / "mean.npy")
    config.normalization.std_path = str(dataset / "std.npy")
    state, summary = train(config, str(tmp_path))
    assert int(state.step) == 4 and os.listdir(tmp_path / "checkpoints") == ["4"]
    rows = read_metrics(str(tmp_path))
    assert sorted(rows) == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows.values())
    assert np.isfinite(summary["mpjpe_mm"])
