"""Video frames: decoding the MTVCrafter sample videos, resolution buckets, seeded crops, pixel shards."""
import pickle

import numpy as np
import pytest

from conftest import REPO_ROOT
from data_pipeline.build import build
from data_pipeline.readers.video import clip_frames, cover_size, crop_offset, decode_frames, video_info
from mtvjax.data.buckets import BUCKETS_512, nearest_bucket, scale_buckets
from mtvjax.config import load_config
from mtvjax.data.safe_pickle import load_pickle
from mtvjax.data.shard_source import ShardSource


def test_sample_videos_decode_to_their_pose_frame_counts(mtvcrafter_sample):
    for clip in load_pickle(mtvcrafter_sample / "sampled_data.pkl"):
        info = video_info(str(mtvcrafter_sample / clip["video_path"]))
        assert info.frames == clip["video_length"] == len(clip["pose"])
        assert (info.height, info.width) == (clip["video_height"], clip["video_width"])


def test_buckets_follow_the_512_table():
    assert len(BUCKETS_512) == 40 and all(h % 32 == 0 and w % 32 == 0 for _, h, w in BUCKETS_512)
    assert nearest_bucket(1024, 1024) == (512, 512)
    assert nearest_bucket(477, 304) == (640, 384)          # MV-DiT's README example image
    assert nearest_bucket(1080, 604) == (672, 384)         # the portrait sample video
    assert nearest_bucket(720, 1280) == (384, 672)
    assert nearest_bucket(1080, 604, scale_buckets(64)) == (84, 48)
    with pytest.raises(ValueError):
        scale_buckets(40)
    for size, bucket in (((1080, 604), (672, 384)), ((720, 1280), (384, 672)), ((50, 50), (64, 64))):
        cover = cover_size(*size, bucket)
        assert cover[0] >= bucket[0] and cover[1] >= bucket[1]
        assert min(cover[0] - bucket[0], cover[1] - bucket[1]) == 0      # the smallest that covers
        assert abs(cover[0] / cover[1] - size[0] / size[1]) < 0.02


def test_frames_are_resized_then_cropped_at_a_seeded_offset(mtvcrafter_sample):
    video = str(mtvcrafter_sample / "videos" / "clip_00001.mp4")
    buckets = scale_buckets(128)
    frames = clip_frames(video, [0, 3, 3, 10], buckets, seed=0, key="clip")
    assert frames.shape == (4, 168, 96, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1], frames[2])
    np.testing.assert_array_equal(frames, clip_frames(video, [0, 3, 3, 10], buckets, 0, "clip"))
    size = cover_size(1080, 604, (168, 96))
    top, left = crop_offset(size, (168, 96), 0, "clip")
    whole = decode_frames(video, [0, 3, 3, 10], size)
    np.testing.assert_array_equal(frames, whole[:, top:top + 168, left:left + 96])
    offsets = {crop_offset((400, 300), (168, 96), seed, "clip") for seed in range(20)}
    assert len(offsets) > 10
    assert all(0 <= t <= 400 - 168 and 0 <= l <= 300 - 96 for t, l in offsets)
    with pytest.raises(ValueError, match="has 127 frames"):
        decode_frames(video, [5, 127])


def test_pixel_build_stores_each_motion_frames_video_frame(mtvcrafter_sample, tmp_path):
    clip = load_pickle(mtvcrafter_sample / "sampled_data.pkl")[0]
    video = str(mtvcrafter_sample / clip["video_path"])
    with open(tmp_path / "short.pkl", "wb") as f:
        pickle.dump([{"pose": clip["pose"][:40], "video_path": video}], f)
    config = load_config(str(REPO_ROOT / "configs" / "data" / "mtvcrafter_sample.py") + ":pixels")
    config.inputs, config.output = (str(tmp_path / "short.pkl"),), str(tmp_path / "ds")
    config.val_fraction = 0.0
    config.video.base_resolution = 64
    manifest = build(config)
    assert manifest["splits"]["train"]["with_frames"] == 1
    stored = ShardSource(tmp_path / "ds")[0]
    assert stored.frames.shape == (40, 84, 48, 3)
    expected = clip_frames(video, np.arange(40), scale_buckets(64), config.seed, "short.pkl")
    np.testing.assert_array_equal(stored.frames[:], expected)
    np.testing.assert_array_equal(stored.frames[3:30:4], expected[3:30:4])
    np.testing.assert_array_equal(stored.frames[7], expected[7])
