"""Shards of the 24 CMU motion-capture BVH files (CC_Base rig, convention "mocap"), at 30 fps.

  python -m data_pipeline.build --config configs/data/cmu_bvh.py
"""
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("MTVJAX_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "cmu_bvh"
    c.inputs = (os.path.join(SHARED, "cmu_bvh"),)
    c.output = os.path.join(REPO, "datasets", c.name)
    # Options of data_pipeline.readers.ingest's BVH reader: resampled from 60 fps, placed 3 m in front
    # of the camera, facing it, up axis detected per clip.
    c.ingest = ml_collections.ConfigDict(dict(target_fps=30.0, camera_distance_m=3.0,
                                              up_axis="auto", units="cm"))
    c.target_fps = 0.0          # the reader already resamples
    c.min_frames = 33
    c.val_fraction = 0.1
    c.seed = 0
    c.shard_records = 1024
    c.video = ml_collections.ConfigDict(dict(store="reference", base_resolution=512, shard_frames=4096))
    return c
