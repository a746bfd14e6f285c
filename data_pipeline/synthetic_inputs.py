"""Synthetic motion-video inputs for tests and benchmarks, made without downloads.

`write_inputs` writes an NLF-style pickle (`motion.pkl`: a list of clips with `pose` and
`video_path`) of the package's procedural motion, and optionally one video per clip with one
frame per motion frame. Video frame t has a flat red channel of `frame_red(t)`, so a decoded,
resized and cropped frame still tells which frame it was, over a fixed noise texture in green
and blue so the pixels do not compress to nothing.
"""
from __future__ import annotations

import os
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mtvjax.data.synthetic_motion import SyntheticMotionSource


def frame_red(t) -> np.ndarray:
    """The red value of video frame `t`: distinct for 24 consecutive frames, 8 apart."""
    return 32 + (8 * np.asarray(t)) % 192


def write_video(path: str, num_frames: int, size: tuple[int, int], fps: int = 30) -> None:
    """An MPEG-4 video of `num_frames` frames of `size` (height, width), red = frame_red(t)."""
    height, width = size
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.qmax = 2
        texture = np.random.default_rng(0).integers(96, 160, (height, width, 2), dtype=np.uint8)
        for t in range(num_frames):
            image = np.empty((height, width, 3), np.uint8)
            image[..., 0] = frame_red(t)
            image[..., 1:] = texture
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_inputs(folder: str | os.PathLike, num_clips: int, frame_range: tuple[int, int],
                 video_size: tuple[int, int] | None = None, seed: int = 0) -> str:
    """Writes `motion.pkl` (and `videos/*.mp4` when `video_size` is given); returns the pickle path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = SyntheticMotionSource(num_clips, frame_range, seed)
    clips = []
    for i in range(num_clips):
        motion = source[i].motion
        clip = {"pose": motion.astype(np.float32), "video_length": len(motion)}
        if video_size is not None:
            (folder / "videos").mkdir(exist_ok=True)
            clip["video_path"] = f"videos/clip_{i:05d}.mp4"
            write_video(str(folder / clip["video_path"]), len(motion), video_size)
        clips.append(clip)
    path = folder / "motion.pkl"
    with open(path, "wb") as f:
        pickle.dump(clips, f, protocol=4)
    return str(path)
