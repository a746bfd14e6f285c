"""Reference image + driving motion → animated video: the `mtvjax animate` pipeline.

Steps: read the motion (`.pkl` through the restricted loader, `.npy`/`.npz`, or a folder of them)
and take `video.frames` frames of one clip; plan the windows (`long_video.plan_windows`); tokenise
each window's motion with the 4DMoT checkpoint (its quantised features, flattened frame-major,
are the MV-DiT motion tokens); bring the reference image to the generation size and encode it;
sample every window (motion CFG with the unconditional tokens, reused per window; later windows
pinned to the previous window's last frames); decode, stitch, write the mp4 and, optionally, the
side-by-side panel. Returns a report with the timings (seconds per sampling step measured on the
compiled loop, compile time apart).

An MV-DiT checkpoint whose config has `model.conditioning="isa"` (interspatial attention) takes
each window's raw motion (`windows_mm[w:w+1]`, mm) instead of tokens; the 4DMoT checkpoint is
then optional: without one no tokens are made and the panel's skeleton column shows the input
motion only; with one it still gives the panel's reconstruction and `tokenizer_mpjpe_mm`.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from mtvjax.data.motion_files import load_clips
from mtvjax.models.mvdit import registry
from mtvjax.sample import reference_image as RI
from mtvjax.sample.long_video import plan_windows, stitch, window_motion
from mtvjax.viz.skeleton_video import read_video_frames, render_motion_frames, write_video



@dataclasses.dataclass
class DrivingMotion:
    motion: np.ndarray            # [frames, 24, 3] mm, at the requested stride
    name: str
    video_path: str | None        # the driving video, when the motion file names one
    first_frame: int
    stride: int


def driving_motion(path, frames: int, clip: int = 0, start: int = 0,
                   stride: int = 1) -> DrivingMotion:
    """`frames` frames of clip `clip` from `start` at `stride`; too short a clip is an error."""
    clips, _ = load_clips(path)
    if not 0 <= clip < len(clips):
        raise ValueError(f"{path}: has {len(clips)} clip(s), clip {clip} requested")
    c = clips[clip]
    span = start + (frames - 1) * stride + 1
    if len(c.motion) < span:
        raise ValueError(f"{c.name}: motion has {len(c.motion)} frames, too short for {frames} "
                         f"frames from frame {start} at stride {stride} ({span} needed)")
    # load_clips already resolved a relative video path against the motion file's folder
    return DrivingMotion(c.motion[start:span:stride], c.name, c.video_path, start, stride)


def build_animator(config, progress: bool = True):
    module, cls = registry.family(config.family).ANIMATOR.split(":")
    return getattr(importlib.import_module(module), cls)(config, progress)


def mvdit_conditioning(folder: str) -> str:
    """`model.conditioning` stored with an MV-DiT checkpoint ("motion_attention" when absent)."""
    from mtvjax.checkpoint.manager import read_config
    config_json, _ = read_config(str(folder))
    return (config_json.get("model") or {}).get("conditioning") or "motion_attention"


def check_checkpoints(config) -> bool:
    """Every checkpoint the family needs is configured and exists, before anything loads.
    Returns whether the MV-DiT is ISA-conditioned (then the 4DMoT is optional)."""
    isa = False
    if config.checkpoints.mvdit and Path(config.checkpoints.mvdit).is_dir():
        isa = mvdit_conditioning(config.checkpoints.mvdit) == "isa"
    needed = (["mvdit"] + ([] if isa else ["tokenizer"]) + ["vae"]
              + (["clip"] if registry.family(config.family).HAS_IMAGE else []))
    if isa and config.checkpoints.tokenizer:
        needed.append("tokenizer")
    for name in needed:
        folder = config.checkpoints[name]
        if not folder:
            raise ValueError(f"checkpoints.{name} is not set (a converted checkpoint folder; "
                             f"see configs/animate.py)")
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: checkpoints.{name} folder not found")
    return isa


def motion_tokens(tokenizer, windows_mm: np.ndarray, width: int) -> dict:
    """Tokenises `[W, frames, 24, 3]` windows: tokens `[W, L·24, width]` and reconstructions."""
    out = tokenizer.tokenize(windows_mm)
    q = out["quantized"]
    if q.shape[-1] != width:
        raise ValueError(f"the 4DMoT tokens are {q.shape[-1]} wide but the MV-DiT takes "
                         f"{width}-wide motion tokens: tokenizer and MV-DiT checkpoints do not "
                         "belong together")
    return {"tokens": q.reshape(q.shape[0], -1, q.shape[-1]), "recon_mm": out["recon_mm"],
            "mpjpe_mm": out["mpjpe_mm"]}


def check_window_frames(frames: int) -> None:
    if frames < 9 or (frames - 1) % 8:
        raise ValueError(f"{frames} frames per window: use 8k + 1 frames (17, 33, 49, ...), the "
                         "lengths 4DMoT and the causal video VAEs both map to 1 + n/4 latent "
                         "frames")


def _panel(reference_u8, driving, motion, recon, video_u8, size: int) -> np.ndarray:
    """[frames, size, ·, 3]: reference | driving video | skeleton in | reconstructed | output."""
    frames, h, w = video_u8.shape[:3]
    width = max(2, round(size * w / h)) // 2 * 2
    fit = lambda x: RI.resize(x, (size, width))
    columns = [np.repeat(fit(reference_u8)[None], frames, 0)]
    if driving is not None:
        columns.append(np.stack([fit(f) for f in driving[:frames]]))
    if recon is None:
        columns.append(render_motion_frames([motion], ["motion"], (width, size)))
    else:
        columns.append(render_motion_frames([motion, recon], ["motion", "4DMoT"],
                                            (width, size)))
    columns.append(np.stack([fit(f) for f in video_u8]))
    n = min(len(c) for c in columns)
    return np.concatenate([c[:n] for c in columns], axis=2)


def _driving_frames(drive: DrivingMotion, frames: int):
    """The driving video's frames matching the motion frames, or None when it is not there."""
    if not drive.video_path or not Path(drive.video_path).is_file():
        return None
    video = read_video_frames(drive.video_path, drive.first_frame + frames * drive.stride)
    return video[drive.first_frame::drive.stride][:frames]


def animate(config, ref_image, motion_path, out_path, progress: bool = True) -> dict:
    """Writes `out_path` (.mp4) and, with `config.panel.enabled`, `OUT_panel.mp4`; returns a
    report (also written as `OUT.json`)."""
    from mtvjax.models.fourdmot.tokenizer import Tokenizer
    started = time.perf_counter()

    def say(stage: str) -> None:   # what the minutes outside the sampling bar are spent on
        if progress:
            print(f"[{time.perf_counter() - started:5.1f} s] {stage}", file=sys.stderr, flush=True)
    v, lg = config.video, config.long
    if Path(out_path).suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"{out_path}: the output must be .mp4 (or .gif)")
    plan = plan_windows(int(v.frames), int(lg.window), int(lg.overlap))
    check_window_frames(plan.window)
    drive = driving_motion(motion_path, plan.frames, config.motion.clip, config.motion.start,
                           config.motion.stride)
    reference_u8 = RI.fit_reference(RI.load_image(ref_image), tuple(v.resolution), v.bucket_base)
    isa = check_checkpoints(config)

    say(f"loading the {config.family} MV-DiT, VAE and encoders "
        f"({len(plan.starts)} window(s) of {plan.window} frames to sample)")
    animator = build_animator(config, progress)
    windows_mm = window_motion(drive.motion, plan)
    tok = None
    if config.checkpoints.tokenizer or not isa:
        say("tokenising the motion with 4DMoT (compiles once)")
        tokenizer = Tokenizer(config.checkpoints.tokenizer)
        width = animator.motion_width
        if isa:   # only for the panel / MPJPE: any code width will do
            width = int(tokenizer.config.model.code_dim)
        tok = motion_tokens(tokenizer, windows_mm, width)

    key_ref, key_windows = jax.random.split(jax.random.PRNGKey(int(config.seed)))
    reference = RI.to_signed(reference_u8)
    say("encoding the reference image")
    cond = animator.prepare(reference, plan.window, key_ref)
    decoded, previous = [], None
    for w in range(len(plan.starts)):
        label = f"window {w + 1}/{len(plan.starts)}"
        joints = windows_mm[w:w + 1, 0] if animator.dynamic_pe else None   # first-frame pose
        tokens = None if isa else tok["tokens"][w:w + 1]
        motion_mm = np.asarray(windows_mm[w:w + 1], np.float32) if isa else None
        say(f"{label}: sampling {int(config.sampling.steps)} steps"
            + (" (the first compiles the sampler)" if w == 0 else ""))
        latents = animator.sample(cond, tokens, jax.random.fold_in(key_windows, w), previous,
                                  label, joints, motion_mm=motion_mm)
        say(f"{label}: decoding with the VAE")
        decoded.append(animator.decode(latents))
        previous = decoded[-1][-plan.overlap:] if plan.overlap else None
    video_u8 = RI.to_uint8(stitch(decoded, plan))
    write_video(video_u8, out_path, v.fps)

    report = {"out": str(out_path), "family": config.family, "frames": int(len(video_u8)),
              "height": int(video_u8.shape[1]), "width": int(video_u8.shape[2]),
              "windows": len(plan.starts), "window_starts": list(plan.starts),
              "motion": drive.name, "steps": int(config.sampling.steps),
              "seconds_per_step": animator.runs.seconds_per_step,
              "compile_seconds": animator.runs.compile_seconds,
              "sample_seconds": animator.runs.sample_seconds,
              "conditioning": "isa" if isa else "motion_attention",
              "tokenizer_mpjpe_mm": None if tok is None else float(np.mean(tok["mpjpe_mm"]))}
    if config.panel.enabled:
        recon = None if tok is None else stitch(list(tok["recon_mm"]), plan)
        panel = _panel(reference_u8, _driving_frames(drive, plan.frames), drive.motion, recon,
                       video_u8, int(config.panel.size))
        panel_path = Path(out_path).with_name(Path(out_path).stem + "_panel.mp4")
        write_video(panel, panel_path, v.fps)
        report["panel"] = str(panel_path)
    report["total_seconds"] = time.perf_counter() - started
    Path(out_path).with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report
