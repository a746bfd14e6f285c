"""A TensorFlow Datasets builder for the SMPL-video dataset, in the ArrayRecord format.

    pip install -e ".[tfds]"            # tensorflow-datasets; TensorFlow is not needed
    builder = SmplVideo(data_config=load_config("configs/data/mtvcrafter_sample.py"), data_dir=DIR)
    builder.download_and_prepare()
    source = tfds.data_source("smpl_video", data_dir=DIR)       # {"train": ..., "val": ...}
    batches = grain.MapDataset.source(source["train"])           # or TfdsClipSource(source["train"])

The examples are the clips `python -m data_pipeline.build` would write for the same data config
(same readers, frame-rate conformance, `min_frames`, split by clip key): motion, key, source id,
fps, convention, video path ("" when none) and video frame indices (empty when none). Pixels
are not part of this format; the shard build stores them. Neither building nor reading imports
TensorFlow: TFDS writes and parses the examples with its own protobuf code.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mtvjax.data.shard_source import ShardClip
from mtvjax.data.skeleton import NUM_JOINTS

from data_pipeline.build import Report, iter_clips
from data_pipeline.shard_writer import SPLITS


class SmplVideo(tfds.core.GeneratorBasedBuilder):
    """SMPL joint motion `[frames, 24, 3]` (camera-space mm) with its video reference."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Motion, fps, convention, video path and frame indices per clip."}

    def __init__(self, *, data_config=None, **kwargs):
        """`data_config`: a `configs/data/*.py` config; needed to build, not to read."""
        self._data_config = data_config
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "motion": tfds.features.Tensor(shape=(None, NUM_JOINTS, 3), dtype=np.float32),
            "key": tfds.features.Text(),
            "source_id": tfds.features.Text(),
            "fps": tfds.features.Scalar(dtype=np.float64),
            "convention": tfds.features.Text(),
            "video_path": tfds.features.Text(),
            "frame_indices": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        }), description=__doc__.split("\n")[0])

    def _split_generators(self, dl_manager):
        if self._data_config is None:
            raise ValueError("SmplVideo needs data_config= (a configs/data/*.py config) to build")
        config = self._data_config.copy_and_resolve_references()
        config.video.store = "reference"
        return {split: self._generate_examples(config, split) for split in SPLITS}

    def _generate_examples(self, config, split):
        for clip in iter_clips(config, Report()):
            if clip.split != split:
                continue
            rec = clip.record
            frame_indices = np.zeros((0,), np.int64) if rec.frame_indices is None else rec.frame_indices
            yield clip.key, {"motion": rec.motion, "key": clip.key, "source_id": rec.source_id,
                             "fps": rec.fps, "convention": rec.convention,
                             "video_path": rec.video_path or "", "frame_indices": frame_indices}


class TfdsClipSource:
    """A `tfds.data_source` split as a loader source of `ShardClip`s (no TensorFlow needed)."""

    def __init__(self, split_source):
        self._source = split_source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> ShardClip:
        ex = self._source[int(index)]
        text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)  # noqa: E731
        indices = np.asarray(ex["frame_indices"])
        return ShardClip(motion=np.asarray(ex["motion"]), name=text(ex["source_id"]),
                         video_path=text(ex["video_path"]) or None, key=text(ex["key"]),
                         fps=float(ex["fps"]), convention=text(ex["convention"]),
                         frame_indices=indices if indices.size else None)
