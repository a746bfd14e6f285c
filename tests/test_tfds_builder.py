"""The TFDS builder: ArrayRecord written, read back by `tfds.data_source` and Grain, no TensorFlow."""
import sys

import grain
import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow-datasets is not installed (pip install -e '.[tfds]'); the TFDS builder is optional")

from conftest import REPO_ROOT  # noqa: E402
from data_pipeline.build import build  # noqa: E402
from data_pipeline.synthetic_inputs import write_inputs  # noqa: E402
from data_pipeline.tfds_builder import SmplVideo, TfdsClipSource  # noqa: E402
from mtvjax.config import load_config  # noqa: E402
from mtvjax.data.loader import make_batches  # noqa: E402
from mtvjax.data.shard_source import ShardSource  # noqa: E402


def test_tfds_round_trip_matches_the_shards(tmp_path):
    write_inputs(tmp_path / "clips", 8, (40, 60), video_size=(32, 32), seed=4)
    config = load_config(str(REPO_ROOT / "configs" / "data" / "mtvcrafter_sample.py"))
    config.inputs, config.output = (str(tmp_path / "clips"),), str(tmp_path / "ds")
    config.val_fraction = 0.3
    manifest = build(config)
    SmplVideo(data_config=config, data_dir=str(tmp_path / "tfds")).download_and_prepare()

    sources = tfds.data_source("smpl_video", data_dir=str(tmp_path / "tfds"))
    for split in ("train", "val"):
        assert len(sources[split]) == manifest["splits"][split]["records"] > 0
        shards = ShardSource(tmp_path / "ds", split)
        expected = {shards[i].key: shards[i] for i in range(len(shards))}
        clips = TfdsClipSource(sources[split])
        for i in range(len(clips)):
            clip = clips[i]
            want = expected.pop(clip.key)
            np.testing.assert_array_equal(clip.motion, want.motion)
            np.testing.assert_array_equal(clip.frame_indices, want.frame_indices)
            assert (clip.name, clip.video_path, clip.fps, clip.convention) == (
                want.name, want.video_path, want.fps, want.convention)
        assert not expected
    example = grain.MapDataset.source(sources["train"])[0]
    assert example["motion"].dtype == np.float32 and example["motion"].shape[1:] == (24, 3)
    batch = make_batches(TfdsClipSource(sources["train"]), 2, (33,), (1,), seed=0)[0]
    assert batch["motion"].shape == (2, 33, 24, 3)
    assert "tensorflow" not in sys.modules
