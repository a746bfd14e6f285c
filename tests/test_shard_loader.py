"""Shards → Grain batches on synthetic inputs: schema, split, processes, resume, video frames."""
import os
import sys

import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config
from data_pipeline.build import build
from data_pipeline.shard_writer import clip_split
from data_pipeline.synthetic_inputs import frame_red, write_inputs
from mtvjax.checkpoint.manager import Checkpointer, abstract_like
from mtvjax.config import load_config as load_config_file
from mtvjax.data.loader import make_batches, make_iterator, make_source
from mtvjax.data.motion_records import RecordSchemaError, decode_record, encode_record
from mtvjax.data.shard_source import ShardSource


def data_config(inputs, output, **overrides):
    config = load_config_file(str(REPO_ROOT / "configs" / "data" / "cmu_bvh.py"))
    config.name = "test"
    config.inputs = tuple(str(p) for p in inputs)
    config.output = str(output)
    config.ingest = {}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


@pytest.fixture(scope="module")
def motion_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion")
    write_inputs(root / "clips", 12, (40, 70), seed=3)
    build(data_config([root / "clips"], root / "ds", val_fraction=0.0, shard_records=5))
    return root / "ds"


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    write_inputs(root / "tall", 3, (40, 50), video_size=(96, 48), seed=1)
    write_inputs(root / "wide", 3, (40, 50), video_size=(48, 96), seed=2)
    build(data_config([root / "tall", root / "wide"], root / "ds", val_fraction=0.0,
                      **{"video.store": "pixels", "video.base_resolution": 64}))
    return root / "ds"


def test_record_bytes_round_trip_and_are_checked():
    rng = np.random.default_rng(0)
    fields = dict(key="a/b.pkl#0", source_id="/x/a/b.pkl#0", motion=rng.normal(size=(5, 24, 3)),
                  fps=30.0, video_path="/x/v.mp4", frame_indices=np.arange(5) + 7,
                  confidence=rng.uniform(size=(5, 24)),
                  video_frames={"kind": "pixels", "first": 12, "size": (4, 6)})
    data = encode_record(**fields)
    assert data == encode_record(**fields)
    rec = decode_record(data)
    np.testing.assert_array_equal(rec["motion"], fields["motion"].astype(np.float32))
    np.testing.assert_array_equal(rec["frame_indices"], fields["frame_indices"])
    np.testing.assert_array_equal(rec["confidence"], fields["confidence"].astype(np.float32))
    assert rec["video_frames"] == {"kind": "pixels", "first": 12, "size": [4, 6]}
    assert rec["video_path"] == "/x/v.mp4" and rec["fps"] == 30.0 and rec["key"] == "a/b.pkl#0"
    bare = decode_record(encode_record(key="k", source_id="s", motion=fields["motion"], fps=25))
    assert bare["video_frames"] is None and bare["video_path"] is None and bare["confidence"] is None
    raw = msgpack.unpackb(data)
    with pytest.raises(RecordSchemaError, match="version 2"):
        decode_record(msgpack.packb({**raw, "schema": 2}))
    with pytest.raises(RecordSchemaError, match="shape"):
        decode_record(msgpack.packb({**raw, "frame_indices": raw["confidence"] | {"dtype": "<i8"}}))
    with pytest.raises(RecordSchemaError, match="kind"):
        decode_record(msgpack.packb({**raw, "video_frames": {**raw["video_frames"], "kind": "latents"}}))
    with pytest.raises(RecordSchemaError):
        decode_record(b"\x93not a record")
    with pytest.raises(RecordSchemaError, match="motion"):
        encode_record(key="k", source_id="s", motion=np.zeros((5, 23, 3)), fps=30)


def test_split_is_a_stable_seeded_function_of_the_clip_key():
    keys = [f"clips/{i}.bvh" for i in range(2000)]
    splits = [clip_split(k, 0, 0.1) for k in keys]
    assert splits == [clip_split(k, 0, 0.1) for k in keys]
    assert 0.08 < splits.count("val") / len(keys) < 0.12
    assert splits != [clip_split(k, 1, 0.1) for k in keys]
    assert {clip_split(k, 0, 0.0) for k in keys} == {"train"}


def test_source_reads_the_shards_and_filters_short_clips(motion_dataset):
    source = ShardSource(motion_dataset, "train")
    assert len(source) == 12 and len(source.manifest["splits"]["train"]["shards"]) == 3
    clip = source[4]
    assert clip.motion.shape == (source.num_frames(4), 24, 3) and clip.key == "clips/motion.pkl#4"
    long_only = ShardSource(motion_dataset, "train", min_frames=60)
    assert len(long_only) + len(long_only.skipped) == 12 and long_only.skipped
    assert all(long_only.num_frames(i) >= 60 for i in range(len(long_only)))
    config = load_config("4dmot.py", "tiny").data
    config.source, config.path = "shards", str(motion_dataset / "train")
    assert len(make_source(config, 33)[0]) == 12
    with pytest.raises(ValueError, match="no clip"):
        ShardSource(motion_dataset, "val")


def test_two_processes_see_each_record_once_per_epoch(motion_dataset):
    source = ShardSource(motion_dataset, "train")
    per_process = [make_batches(source, 4, (33,), (1, 2), seed=5, scale_aug=0.1, shift_aug=0.1,
                                process_index=p, process_count=2) for p in range(2)]
    for epoch in range(2):                  # 3 global batches of 4 = one epoch of 12 records
        keys = [source[int(i)].key for batches in per_process
                for step in range(3 * epoch, 3 * epoch + 3) for i in batches[step]["index"]]
        assert sorted(keys) == sorted(source[i].key for i in range(12))


def test_iterator_state_round_trips_through_orbax(motion_dataset, tmp_path):
    batches = make_batches(ShardSource(motion_dataset, "train"), 4, (33, 49), (1, 2), seed=2)
    state = {"w": jnp.arange(3.0)}
    it = make_iterator(batches, num_threads=2, prefetch=2)
    for _ in range(5):
        next(it)
    checkpointer = Checkpointer(str(tmp_path / "ckpt"))
    checkpointer.save(5, state, it, {})
    checkpointer.wait()
    expected = [next(it) for _ in range(4)]
    resumed = make_iterator(batches, num_threads=1, prefetch=1)
    restored = Checkpointer(str(tmp_path / "ckpt")).restore(5, abstract_like(state), resumed)
    np.testing.assert_array_equal(restored["w"], state["w"])
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["motion"], want["motion"])
        np.testing.assert_array_equal(got["index"], want["index"])


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are exercised on Linux")
def test_worker_processes_resume_exactly(motion_dataset):
    batches = make_batches(ShardSource(motion_dataset, "train"), 4, (33,), (1, 2), seed=4)
    it = make_iterator(batches, num_threads=1, prefetch=1, num_workers=1)
    for _ in range(3):
        next(it)
    state = it.get_state()
    resumed = make_iterator(batches, num_threads=1, prefetch=1, num_workers=1)
    resumed.set_state(state)
    for step in range(3, 6):
        np.testing.assert_array_equal(next(resumed)["motion"], batches[step]["motion"])
    it.close()
    resumed.close()


def test_video_batches_come_from_one_bucket_and_match_their_motion(video_dataset):
    source = ShardSource(video_dataset, "train")
    assert sorted(set(source.frame_sizes())) == [(44, 88), (88, 44)]   # the 0.5 and 2.0 buckets at 64
    batches = make_batches(source, 2, (33,), (1, 2), seed=0, groups=source.frame_sizes())
    for step in range(6):
        batch = batches[step]
        assert batch["frames"].dtype == np.uint8 and batch["frames"].shape[:2] == (2, 33)
        for motion, frames, index in zip(batch["motion"], batch["frames"], batch["index"]):
            clip = source[int(index)]
            assert frames.shape[1:3] == source.frame_sizes()[int(index)]
            start, step_ = next((s, k) for k in (1, 2) for s in range(len(clip.motion))
                                if np.array_equal(clip.motion[s:s + 32 * k + 1:k], motion))
            shown = frames[..., 0].mean(axis=(1, 2))
            video_frames = clip.frame_indices[start:start + 32 * step_ + 1:step_]
            np.testing.assert_allclose(shown, frame_red(video_frames), atol=3.5)  # frames 8 apart
    mixed = make_batches(source, 6, (33,), (1,), seed=0)
    with pytest.raises(ValueError, match="frame size"):
        mixed[0]


def test_manifest_of_a_synthetic_build(motion_dataset):
    manifest = ShardSource(motion_dataset).manifest
    assert manifest["splits"]["train"]["records"] == 12 and not manifest["errors"]
    assert [s["records"] for s in manifest["splits"]["train"]["shards"]] == [5, 5, 2]
    assert manifest["splits"]["val"] == {"records": 0, "frames": 0, "shards": [], "frame_shards": [],
                                         "conventions": {}, "with_video": 0, "with_frames": 0}
    assert sorted(os.listdir(motion_dataset)) == ["manifest.json", "mean.npy", "std.npy", "train"]
