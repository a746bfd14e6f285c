"""Driving controls: which frames of a pose file drive the model, at the model's frame rate.

A pose file holds motion at its own rate (`fps` in the file, or `motion.fps` in the config, or
else taken to be the model's rate). Output frame `i` of the generated video shows the motion at
source frame

    start + i · stride · speed · source_fps / model_fps

linearly interpolated between neighbouring source frames (`mtvjax.data.resample.sample_at`).
So 60 fps motion driven at a model rate of 20 takes every third frame (the joints of its 20 fps
version), `speed` 2 covers twice the motion in the same number of frames (half the duration),
and `stride` keeps its old meaning (every stride-th frame) as a factor of the step. With no rate
anywhere, speed 1 and stride 1, the motion is used frame for frame.

`reconstruction_warnings` turns the 4DMoT reconstruction error of each window into warnings:
motion the tokenizer cannot represent will not animate well.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mtvjax.data.motion_files import load_clips
from mtvjax.data.resample import sample_at


@dataclasses.dataclass
class DrivingMotion:
    motion: np.ndarray            # [frames, 24, 3] mm, at the model's frame rate
    name: str
    video_path: str | None        # the driving video, when the motion file names one
    source_frames: np.ndarray     # float [frames]: the pose file's frame shown at each frame
    source_fps: float             # the pose file's rate used


def source_step(controls, source_fps: float, model_fps: float) -> float:
    """Source frames advanced per model frame."""
    return float(controls.stride) * float(controls.speed) * source_fps / model_fps


def check_controls(controls, model_fps: float) -> None:
    """The driving fields of `config.motion` are usable; errors name the key."""
    checks = {"motion.clip": (controls.clip, controls.clip >= 0),
              "motion.start": (controls.start, controls.start >= 0),
              "motion.stride": (controls.stride, controls.stride >= 1),
              "motion.fps": (controls.fps, controls.fps >= 0),
              "motion.speed": (controls.speed, controls.speed > 0),
              "video.model_fps": (model_fps, model_fps > 0)}
    for key, (value, ok) in checks.items():
        if not ok:
            raise ValueError(f"{key}={value!r}: must be "
                             + ("positive" if key in ("motion.speed", "video.model_fps")
                                else "at least 1" if key == "motion.stride" else "non-negative"))


def driving_motion(path, frames: int, controls, model_fps: float) -> DrivingMotion:
    """`frames` model-rate frames of clip `controls.clip` of `path`; too short a clip is an error.

    `controls` is the config's `motion` section: `clip`, `start` (source frame), `stride`,
    `fps` (0: the file's rate, else the model's), `speed`.
    """
    check_controls(controls, model_fps)
    clips, _ = load_clips(path)
    if controls.clip >= len(clips):
        raise ValueError(f"{path}: has {len(clips)} clip(s), clip {controls.clip} requested")
    clip = clips[controls.clip]
    source_fps = float(controls.fps or clip.fps or model_fps)
    step = source_step(controls, source_fps, model_fps)
    positions = controls.start + np.arange(frames) * step
    last = len(clip.motion) - 1
    if positions[-1] > last + 1e-6:
        raise ValueError(
            f"{clip.name}: motion has {len(clip.motion)} frames at {source_fps:g} fps, too short "
            f"for {frames} frames at {model_fps:g} fps from frame {controls.start} "
            f"(speed {controls.speed:g}, stride {controls.stride}: source frame "
            f"{positions[-1]:.1f} needed)")
    positions = np.minimum(positions, last)
    # load_clips already resolved a relative video path against the motion file's folder
    return DrivingMotion(sample_at(clip.motion, positions), clip.name, clip.video_path,
                         positions, source_fps)


def reconstruction_warnings(mpjpe_mm_per_window, threshold_mm: float) -> list[str]:
    """One warning per window whose 4DMoT reconstruction MPJPE exceeds `threshold_mm` (0: off)."""
    if threshold_mm <= 0:
        return []
    return [f"window {w + 1}: the 4DMoT tokenizer reconstructs the driving motion with "
            f"{float(err):.1f} mm MPJPE (above motion.mpjpe_warn_mm={threshold_mm:g}); motion it "
            f"cannot represent will not animate well"
            for w, err in enumerate(np.asarray(mpjpe_mm_per_window).reshape(-1))
            if float(err) > threshold_mm]
