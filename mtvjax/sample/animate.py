"""Reference image + driving motion → animated video: the `mtvjax animate` pipeline.

Steps: read `video.frames` frames of one clip of the motion at the model's frame rate
(`driving.driving_motion`); plan the windows (`long_video.plan_windows`); tokenise each window's
motion with the 4DMoT checkpoint (its quantised features, flattened frame-major, are the MV-DiT
motion tokens); bring the reference image to the generation size and encode it; sample every
window (motion CFG with the unconditional tokens, reused per window; later windows pinned to the
previous window's last frames); decode, stitch, write the mp4 and, optionally, the side-by-side
panel. Returns a report with the timings (seconds per sampling step measured on the compiled
loop, compile time apart), the 4DMoT reconstruction error per window and its warnings.

`AnimateSession` holds the loaded models (MV-DiT, VAE, encoders, 4DMoT) so that many clips run
against one load (`mtvjax generate`, `mtvjax.sample.generate`); `animate` is the one-clip path.

An MV-DiT checkpoint whose config has `model.conditioning="isa"` (interspatial attention) takes
each window's raw motion (`windows_mm[w:w+1]`, mm) instead of tokens; the 4DMoT checkpoint is
then optional: without one no tokens are made and the panel's skeleton column shows the input
motion only; with one it still gives the panel's reconstruction and `tokenizer_mpjpe_mm`.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from mtvjax.evaluate.video_eval import Clip, read_clip
from mtvjax.models.mvdit import registry
from mtvjax.sample import reference_image as RI
from mtvjax.sample.driving import DrivingMotion, driving_motion, reconstruction_warnings
from mtvjax.sample.long_video import WindowPlan, plan_windows, stitch, window_motion
from mtvjax.viz.skeleton_video import render_motion_frames, write_video


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


def driving_video_frames(path, source_frames) -> np.ndarray:
    """uint8 `[frames, H, W, 3]`: the frames of a driving video (a video file or a folder of
    frame images, frame k of the pose file = frame k of the video) at `source_frames`, rounded."""
    index = np.round(np.asarray(source_frames, np.float64)).astype(np.int64)
    kind = "frames" if os.path.isdir(path) else "video"
    video = read_clip(Clip(Path(path).name, str(path), kind), int(index.max()) + 1)
    if len(video) <= index.max():
        raise ValueError(f"{path}: the driving video has {len(video)} frames, the motion needs "
                         f"frame {int(index.max())}")
    return video[index]


def plan_for(config) -> WindowPlan:
    """The window plan of `config.video.frames` (checked: 8k + 1 frames per window)."""
    plan = plan_windows(int(config.video.frames), int(config.long.window),
                        int(config.long.overlap))
    check_window_frames(plan.window)
    return plan


@dataclasses.dataclass
class Animation:
    """One animated clip, before anything is written."""
    video_u8: np.ndarray                  # [frames, H, W, 3]
    window_mpjpe_mm: list | None          # 4DMoT reconstruction error per window
    recon_mm: np.ndarray | None           # stitched 4DMoT reconstruction [frames, 24, 3]
    seconds: dict                         # compile / sample / total seconds of this clip
    steps: int                            # sampling steps run


class AnimateSession:
    """The models of an animate config, loaded once; `run` animates one reference + motion."""

    def __init__(self, config, progress: bool = True):
        from mtvjax.models.fourdmot.tokenizer import Tokenizer
        self.config, self.progress = config, progress
        self.isa = check_checkpoints(config)
        self.plan = plan_for(config)
        self.animator = build_animator(config, progress)
        self.tokenizer, self.token_width = None, None
        if config.checkpoints.tokenizer or not self.isa:
            self.tokenizer = Tokenizer(config.checkpoints.tokenizer)
            self.token_width = self.animator.motion_width
            if self.isa:   # only for the panel / MPJPE: any code width will do
                self.token_width = int(self.tokenizer.config.model.code_dim)
        self.prompt = config.prompt

    def use_prompt(self, prompt: str) -> None:
        """Switches the 17B's text conditioning to `prompt` (encoded with the umT5 checkpoint)."""
        if prompt == self.prompt:
            return
        from mtvjax.sample.animator_wan import text_embeddings
        if not registry.family(self.config.family).HAS_TEXT or self.config.prompt_embeddings:
            raise ValueError(f"prompt {prompt!r}: this config cannot encode prompts (the 7B has "
                             "no text input; a 17B with prompt_embeddings has fixed ones)")
        config = self.config.copy_and_resolve_references()
        config.prompt = prompt
        self.animator.text, self.animator.negative = text_embeddings(config)
        self.prompt = prompt

    def run(self, reference_u8: np.ndarray, motion_mm: np.ndarray, seed: int,
            say=lambda stage: None) -> Animation:
        """Animates `reference_u8` (at the generation size) with `motion_mm` `[frames, 24, 3]`."""
        plan, animator, runs = self.plan, self.animator, self.animator.runs
        before = (runs.compile_seconds, runs.sample_seconds, runs.steps_run)
        started = time.perf_counter()
        windows_mm = window_motion(motion_mm, plan)
        tok = None
        if self.tokenizer is not None:
            say("tokenising the motion with 4DMoT (compiles once)")
            tok = motion_tokens(self.tokenizer, windows_mm, self.token_width)
        key_ref, key_windows = jax.random.split(jax.random.PRNGKey(int(seed)))
        say("encoding the reference image")
        cond = animator.prepare(RI.to_signed(reference_u8), plan.window, key_ref)
        decoded, previous = [], None
        for w in range(len(plan.starts)):
            label = f"window {w + 1}/{len(plan.starts)}"
            joints = windows_mm[w:w + 1, 0] if animator.dynamic_pe else None   # first-frame pose
            tokens = None if self.isa else tok["tokens"][w:w + 1]
            raw_mm = np.asarray(windows_mm[w:w + 1], np.float32) if self.isa else None
            say(f"{label}: sampling {int(self.config.sampling.steps)} steps"
                + (" (the first compiles the sampler)" if w == 0 else ""))
            latents = animator.sample(cond, tokens, jax.random.fold_in(key_windows, w), previous,
                                      label, joints, motion_mm=raw_mm)
            say(f"{label}: decoding with the VAE")
            decoded.append(animator.decode(latents))
            previous = decoded[-1][-plan.overlap:] if plan.overlap else None
        seconds = {"compile": runs.compile_seconds - before[0],
                   "sample": runs.sample_seconds - before[1],
                   "total": time.perf_counter() - started}
        return Animation(RI.to_uint8(stitch(decoded, plan)),
                         None if tok is None else [float(e) for e in tok["mpjpe_mm"]],
                         None if tok is None else stitch(list(tok["recon_mm"]), plan),
                         seconds, runs.steps_run - before[2])


def read_driving(config, motion_path, frames: int, controls=None) -> DrivingMotion:
    """`frames` frames of the driving motion at the model's rate (`controls`: a `motion`
    section, the config's by default)."""
    return driving_motion(motion_path, frames, controls or config.motion,
                          float(config.video.model_fps))


def animate(config, ref_image, motion_path, out_path, progress: bool = True) -> dict:
    """Writes `out_path` (.mp4) and, with `config.panel.enabled`, `OUT_panel.mp4`; returns a
    report (also written as `OUT.json`)."""
    started = time.perf_counter()

    def say(stage: str) -> None:   # what the minutes outside the sampling bar are spent on
        if progress:
            print(f"[{time.perf_counter() - started:5.1f} s] {stage}", file=sys.stderr, flush=True)
    v = config.video
    if Path(out_path).suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"{out_path}: the output must be .mp4 (or .gif)")
    plan = plan_for(config)
    drive = read_driving(config, motion_path, plan.frames)
    reference_u8 = RI.fit_reference(RI.load_image(ref_image), tuple(v.resolution), v.bucket_base)

    say(f"loading the {config.family} MV-DiT, VAE and encoders "
        f"({len(plan.starts)} window(s) of {plan.window} frames to sample)")
    session = AnimateSession(config, progress)
    result = session.run(reference_u8, drive.motion, int(config.seed), say)
    video_u8 = result.video_u8
    write_video(video_u8, out_path, v.fps)
    warnings = ([] if result.window_mpjpe_mm is None else
                reconstruction_warnings(result.window_mpjpe_mm, float(config.motion.mpjpe_warn_mm)))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    runs = session.animator.runs
    report = {"out": str(out_path), "family": config.family, "frames": int(len(video_u8)),
              "height": int(video_u8.shape[1]), "width": int(video_u8.shape[2]),
              "windows": len(plan.starts), "window_starts": list(plan.starts),
              "motion": drive.name, "source_fps": drive.source_fps,
              "model_fps": float(v.model_fps), "steps": int(config.sampling.steps),
              "seconds_per_step": runs.seconds_per_step,
              "compile_seconds": runs.compile_seconds, "sample_seconds": runs.sample_seconds,
              "conditioning": "isa" if session.isa else "motion_attention",
              "tokenizer_mpjpe_mm": (None if result.window_mpjpe_mm is None
                                     else float(np.mean(result.window_mpjpe_mm))),
              "window_mpjpe_mm": result.window_mpjpe_mm, "warnings": warnings}
    if config.panel.enabled:
        driving = (driving_video_frames(drive.video_path, drive.source_frames)
                   if drive.video_path and Path(drive.video_path).exists() else None)
        panel = _panel(reference_u8, driving, drive.motion, result.recon_mm, video_u8,
                       int(config.panel.size))
        panel_path = Path(out_path).with_name(Path(out_path).stem + "_panel.mp4")
        write_video(panel, panel_path, v.fps)
        report["panel"] = str(panel_path)
    report["total_seconds"] = time.perf_counter() - started
    Path(out_path).with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report
