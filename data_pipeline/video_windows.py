"""Training windows of real videos: clips of pose files, windows of consecutive frames, crops.

Clips are read as `data_pipeline.build.iter_clips` reads them (every format of
`data_pipeline.readers.ingest`, bad files reported and skipped, keys relative to the input,
train/val by a seeded hash of the key). A clip's video is its pose file's `video_path`, relative
to the pose file, else to `data_root`. Before any window is cut the video is checked: it must
exist and decode, its frame count must equal the pose file's `video_length` (when it states one)
and cover every frame index of the clip; a clip failing a check is a bad input with its reason.

A window is `frames` motion frames whose video frame indices are consecutive (a window never
spans a gap of the detections), starting every `window_stride` frames of each consecutive run;
`windows_per_clip` > 0 keeps that many, evenly spread. Each window is cut `crops_per_window`
times to the clip's nearest resolution bucket (`model_buckets(base_resolution)`): the frames are
resized to cover the bucket (`readers.video.cover_size`), then cropped at offsets drawn from the
build seed and the window's key (`readers.video.crop_offset`), so a rebuild gives the same
pixels. Pixels are float32 in [−1, 1]; a clip's video is decoded once for all its windows
(`clip_windows`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator

import av
import ml_collections
import numpy as np

from mtvjax.data.buckets import nearest_bucket, scale_buckets

from data_pipeline.build import Clip, Report, iter_clips
from data_pipeline.readers.video import cover_size, crop_offset, iter_frames, video_info


@dataclasses.dataclass(frozen=True)
class VideoClip:
    """A usable clip: its video, the resize that covers its bucket, and its window starts."""

    clip: Clip
    video: str
    size: tuple[int, int]          # (height, width) the frames are resized to
    bucket: tuple[int, int]        # (height, width) of the crops
    starts: list[int]              # motion-frame indices where windows begin


def reader_config(config) -> ml_collections.ConfigDict:
    """The settings `build.iter_clips` reads, from a video latent config (no resampling: motion
    frames stay video frames; clips shorter than a window are skipped)."""
    return ml_collections.ConfigDict(dict(
        inputs=tuple(config.inputs), ingest=dict(config.ingest), target_fps=0.0,
        min_frames=int(config.frames), seed=int(config.seed),
        val_fraction=float(config.val_fraction),
        video=dict(store="reference", base_resolution=int(config.base_resolution))))


def model_buckets(base: int) -> tuple:
    """`scale_buckets(base)` with each side rounded down to a multiple of 16 (the VAEs' ×8 and
    the DiT's 2×2 latent patches; the 512-class table already is)."""
    return tuple((ratio, h // 16 * 16, w // 16 * 16) for ratio, h, w in scale_buckets(base))


def window_starts(frame_indices: np.ndarray, frames: int, stride: int, cap: int) -> list[int]:
    """Starts of the `frames`-long windows whose video frame indices are consecutive, every
    `stride` frames of each consecutive run; at most `cap` (> 0) of them, evenly spread."""
    breaks = np.flatnonzero(np.diff(frame_indices) != 1) + 1
    starts = []
    for begin, end in zip(np.r_[0, breaks], np.r_[breaks, len(frame_indices)]):
        starts.extend(range(int(begin), int(end) - frames + 1, stride))
    if cap and len(starts) > cap:
        starts = [starts[i] for i in np.unique(np.round(np.linspace(0, len(starts) - 1, cap))
                                               .astype(int))]
    return starts


def pose_file(source_id: str) -> str:
    """The pose file of a record's `source_id` (without the `#item` / `#part` suffixes)."""
    return re.sub(r"(#\d+)+$", "", source_id)


def find_video(video_path: str, source_id: str, data_root: str) -> tuple[str | None, list[str]]:
    """(the existing video, the places looked at): the path as the pose file resolves it, then
    the same relative path under `data_root`."""
    tried = [video_path]
    relative = os.path.relpath(video_path, os.path.dirname(os.path.abspath(pose_file(source_id))))
    if data_root and not relative.startswith(".."):
        tried.append(os.path.join(data_root, relative))
    return next((p for p in tried if os.path.isfile(p)), None), tried


def check_video(clip: Clip, data_root: str) -> tuple[str, tuple[int, int]]:
    """(video path, its (height, width)) of a clip whose video passes the checks; else
    ValueError with the reason."""
    record = clip.record
    if record.video_path is None or record.frame_indices is None:
        raise ValueError("no video: the pose file names no video_path")
    video, tried = find_video(record.video_path, record.source_id, data_root)
    if video is None:
        raise ValueError(f"missing video (looked for {' and '.join(tried)})")
    try:
        info = video_info(video)
    except (OSError, av.FFmpegError, IndexError) as e:
        raise ValueError(f"unreadable video {video}: {e}") from None
    if record.video_length is not None and record.video_length != info.frames:
        raise ValueError(f"pose/video length mismatch: the pose file says video_length "
                         f"{record.video_length}, {video} has {info.frames} frames")
    last = int(record.frame_indices.max())
    if last >= info.frames:
        raise ValueError(f"pose/video length mismatch: poses reach video frame {last}, "
                         f"{video} has {info.frames} frames")
    return video, (info.height, info.width)


def iter_video_clips(config, report: Report, process: int = 0, count: int = 1
                     ) -> Iterator[VideoClip]:
    """This process's clips (every `count`-th usable clip from the `process`-th) with their
    windows; bad inputs and clips without a window go into `report`."""
    buckets = model_buckets(int(config.base_resolution))
    n = -1
    for clip in iter_clips(reader_config(config), report):
        n += 1
        if n % count != process:
            continue
        try:
            video, (height, width) = check_video(clip, config.data_root)
        except ValueError as e:
            report.errors.append({"path": clip.record.video_path or pose_file(clip.record.source_id),
                                  "message": f"{clip.key}: {e}"})
            continue
        starts = window_starts(clip.record.frame_indices, int(config.frames),
                               int(config.window_stride), int(config.windows_per_clip))
        if not starts:
            report.skipped.append({"key": clip.key, "message": f"too few frames: no "
                                   f"{config.frames} consecutive video frames with poses"})
            continue
        bucket = nearest_bucket(height, width, buckets)
        yield VideoClip(clip, video, cover_size(height, width, bucket), bucket, starts)


def window_key(clip_key: str, start: int, crop: int) -> str:
    """The record key of crop `crop` of the window at `start`."""
    return f"{clip_key}@{start}/{crop}"


def crop_box(vc: VideoClip, start: int, crop: int, seed: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a window's crop, drawn from (`seed`, its key)."""
    return crop_offset(vc.size, vc.bucket, seed, window_key(vc.clip.key, start, crop)) + vc.bucket


def clip_windows(vc: VideoClip, frames: int, crops: int, seed: int) -> Iterator[tuple]:
    """(window index, start, crop index, crop box, float32 `[frames, h, w, 3]` in [−1, 1]) for
    every crop of every window of a clip, in window order, decoding the video once: frames are
    kept only while a pending window needs them. ValueError when the video ends early."""
    indices = vc.clip.record.frame_indices
    spans = [indices[start:start + frames] for start in vc.starts]
    needed = set(np.concatenate(spans).tolist())
    frames_by_index, w = {}, 0
    for i, image in iter_frames(vc.video, vc.size, needed.__contains__):
        if image is not None:
            frames_by_index[i] = image
        while w < len(spans) and spans[w][-1] <= i:
            window = np.stack([frames_by_index[j] for j in spans[w].tolist()])
            for c in range(crops):
                top, left, height, width = box = crop_box(vc, vc.starts[w], c, seed)
                pixels = window[:, top:top + height, left:left + width]
                pixels = pixels.astype(np.float32) / 127.5 - 1.0
                yield w, vc.starts[w], c, box, pixels
            w += 1
            first = spans[w][0] if w < len(spans) else i + 1
            frames_by_index = {j: f for j, f in frames_by_index.items() if j >= first}
        if w == len(spans):
            return
    raise ValueError(f"{vc.video}: the video ended before video frame {int(spans[w][-1])}")
