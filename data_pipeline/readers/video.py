"""Video frames of motion-video records: decode, resize and crop to MV-DiT's resolution buckets.

Buckets are the (height, width) sizes MV-DiT trains and samples at (`mtvjax.data.buckets`: the
512-class table, `scale_buckets` for small tests or a low-res stage). A clip goes to the bucket
whose ratio is nearest the video's; every frame is resized (bilinear, FFmpeg's swscale through
PyAV) to the smallest size that covers the bucket, then cropped to it at one offset per clip
drawn from a generator seeded by the build seed and the clip's key, so a rebuild gives the same
pixels.

VAE latents: DiT training reads latents, not pixels. The latent build
(`python -m data_pipeline.latents --config configs/data/real_videos.py`,
`data_pipeline.video_windows` / `video_latents`) cuts windows and crops with these functions and
encodes them with the family's video VAE into latent records. Motion-shard builds
(`data_pipeline.build`) store pixels (`video.store="pixels"`) or only the video reference and
frame indices (`"reference"`); `store="latents"` there is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib

import av
import numpy as np

from mtvjax.data.buckets import nearest_bucket


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    frames: int
    height: int
    width: int
    fps: float


def cover_size(height: int, width: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """The smallest (height, width) of the video's aspect that covers `bucket` on both axes."""
    scale = max(bucket[0] / height, bucket[1] / width)
    return max(bucket[0], round(height * scale)), max(bucket[1], round(width * scale))


def crop_offset(size: tuple[int, int], bucket: tuple[int, int], seed: int, key: str) -> tuple[int, int]:
    """A (top, left) crop of `bucket` from `size`, drawn from (`seed`, `key`)."""
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([seed, digest])
    return (int(rng.integers(0, size[0] - bucket[0] + 1)),
            int(rng.integers(0, size[1] - bucket[1] + 1)))


def video_info(path: str) -> VideoInfo:
    """Frame count (by decoding), size and average rate of a video's first video stream."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        frames = sum(1 for _ in container.decode(stream))
        return VideoInfo(frames, stream.codec_context.height, stream.codec_context.width,
                         float(rate) if rate else 0.0)


def iter_frames(path: str, size: tuple[int, int] | None = None, keep=None):
    """(index, uint8 `[H, W, 3]` RGB frame) in decode order, each resized to (height, width)
    `size` first (None keeps the video's size); frames whose index `keep(index)` rejects are
    decoded but not converted (None in their place). Decoding stops when the caller stops."""
    kwargs = {} if size is None else {"height": size[0], "width": size[1],
                                      "interpolation": "BILINEAR"}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            yield i, (frame.to_ndarray(format="rgb24", **kwargs)
                      if keep is None or keep(i) else None)


def decode_frames(path: str, indices, size: tuple[int, int] | None = None,
                  crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """uint8 `[len(indices), H, W, 3]` RGB frames at the given decode-order indices.

    Args:
      size: (height, width) to resize each frame to first; None keeps the video's size.
      crop: (top, left, height, width) to cut from the (resized) frame; None keeps all of it.
    Raises:
      ValueError: an index past the end of the video (the message names the video).
    """
    indices = np.asarray(indices, np.int64)
    wanted = set(indices.tolist())
    if indices.size and indices.min() < 0:
        raise ValueError(f"{path}: negative frame index {int(indices.min())}")
    last = int(indices.max()) if indices.size else -1
    found, decoded = {}, 0
    for i, image in iter_frames(path, size, wanted.__contains__):
        if i > last:
            break
        decoded = i + 1
        if image is None:
            continue
        if crop is not None:
            top, left, h, w = crop
            image = image[top:top + h, left:left + w]
        found[i] = image
    if len(found) < len(wanted):
        raise ValueError(f"{path}: frame {last} requested, the video has {decoded} frames")
    if not indices.size:
        raise ValueError(f"{path}: no frame indices given")
    return np.stack([found[i] for i in indices.tolist()])


def clip_frames(path: str, indices, buckets, seed: int, key: str) -> np.ndarray:
    """The frames of one clip in its nearest bucket: resized to cover it, then cropped to it."""
    with av.open(path) as container:
        ctx = container.streams.video[0].codec_context
        height, width = ctx.height, ctx.width
    bucket = nearest_bucket(height, width, buckets)
    size = cover_size(height, width, bucket)
    top, left = crop_offset(size, bucket, seed, key)
    return decode_frames(path, indices, size, (top, left) + bucket)
