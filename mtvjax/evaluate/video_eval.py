"""Config-driven evaluation of generated videos against ground truth (TikTok / Fashion layout).

  mtvjax eval --config configs/eval_video.py:tiktok --config.data_root=DIR \
      --config.weights.lpips=ckpt/lpips --config.weights.inception=ckpt/inception \
      --config.weights.i3d=ckpt/i3d

Layout: `generated_dir` and `ground_truth_dir` (relative paths are under `data_root`) each hold
one entry per clip — an mp4 (or another video PyAV decodes) or a folder of frame images (png,
jpg, ...; in natural name order). Clips pair by name (file stem or folder name); a clip on one
side only is an error listing the names. Every check (folders, pairing, weight folders) runs
before any frame is decoded.

Per pair: both are cut to the shorter frame count (and `max_frames`), the generated frames are
resized to the ground-truth size (or both to `frame_size`) with PyTorch-style bilinear
resampling, and the configured metrics are computed:

  psnr, ssim   per frame, on [0, 1] RGB (`video_metrics.psnr` / `ssim`), mean over all frames;
  lpips        per frame (inputs scaled to [-1, 1]), mean over all frames;
  fid          Fréchet distance of InceptionV3 pool features of every `fid_frame_stride`-th frame
               of all generated vs all ground-truth clips;
  fvd          Fréchet distance of I3D features (`fvd_features`, logits by default) of the
               `fvd_frames`-frame segments taken every `fvd_stride` frames of every clip;
  fid_vid      Fréchet distance of I3D features (`fid_vid_features`) averaged over each clip's
               segments: one vector per video.

The report (JSON) holds the summary metrics, per-clip PSNR/SSIM/LPIPS and notes (truncations,
resizes, clips too short for a segment); `format_table` renders it for a terminal.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax
import numpy as np

from mtvjax.evaluate import video_metrics as vm
from mtvjax.evaluate.feature_nets.layers import resize_bilinear
from mtvjax.evaluate.feature_nets.registry import load_feature_net

METRICS = ("psnr", "ssim", "lpips", "fid", "fvd", "fid_vid")
NET_OF_METRIC = {"lpips": "lpips", "fid": "inception", "fvd": "i3d", "fid_vid": "i3d"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v")
I3D_OUTPUTS = ("logits", "pool")


@dataclasses.dataclass(frozen=True)
class Clip:
    name: str
    path: str
    kind: str        # "video" or "frames"


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def resolve_dir(config, field: str) -> str:
    path = os.path.expanduser(str(config[field]))
    if not path:
        raise ValueError(f"{field} is empty: set --config.{field}=DIR")
    return path if os.path.isabs(path) else os.path.join(str(config.data_root), path)


def resolve_weights(config, kind: str) -> str:
    """The checkpoint folder of feature net `kind` (relative paths under `weights_root`)."""
    path = os.path.expanduser(str(config.weights.get(kind) or ""))
    if path and not os.path.isabs(path):
        path = os.path.join(str(config.get("weights_root") or ""), path)
    return path


def find_clips(folder: str, label: str) -> dict[str, Clip]:
    """`{name: Clip}` of a folder: video files and sub-folders holding frame images."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{label} {folder}: folder not found")
    clips, problems = {}, []
    for entry in sorted(os.listdir(folder), key=_natural_key):
        if entry.startswith("."):
            continue   # .DS_Store, .ipynb_checkpoints, ...
        path = os.path.join(folder, entry)
        stem, suffix = os.path.splitext(entry)
        if os.path.isdir(path):
            if not any(f.lower().endswith(IMAGE_SUFFIXES) for f in os.listdir(path)):
                problems.append(f"{entry}/ has no frame images ({', '.join(IMAGE_SUFFIXES)})")
                continue
            clip = Clip(entry, path, "frames")
        elif suffix.lower() in VIDEO_SUFFIXES:
            clip = Clip(stem, path, "video")
        else:
            continue   # reports, notes, ...
        if clip.name in clips:
            problems.append(f"clip {clip.name!r} is both {os.path.basename(clips[clip.name].path)}"
                            f" and {entry}")
        clips[clip.name] = clip
    if problems:
        raise ValueError(f"{label} {folder}: " + "; ".join(problems))
    if not clips:
        raise ValueError(f"{label} {folder}: no clips (video files {', '.join(VIDEO_SUFFIXES)} "
                         "or folders of frame images)")
    return clips


def pair_clips(generated: dict, ground_truth: dict) -> list[tuple[str, Clip, Clip]]:
    """(name, generated, ground truth) for every clip; a clip missing on one side is an error."""
    only_gen = sorted(set(generated) - set(ground_truth), key=_natural_key)
    only_gt = sorted(set(ground_truth) - set(generated), key=_natural_key)
    if only_gen or only_gt:
        parts = []
        if only_gt:
            parts.append(f"missing from generated_dir: {', '.join(only_gt[:20])}")
        if only_gen:
            parts.append(f"missing from ground_truth_dir: {', '.join(only_gen[:20])}")
        raise ValueError("clips do not pair by name: " + "; ".join(parts))
    return [(n, generated[n], ground_truth[n]) for n in sorted(generated, key=_natural_key)]


def _rgb(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: not an RGB image (shape {image.shape})")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.integer):   # 16-bit PNGs
            image = (image.astype(np.float64) / np.iinfo(image.dtype).max * 255).round()
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def read_clip(clip: Clip, max_frames: int = 0) -> np.ndarray:
    """uint8 `[T, H, W, 3]` RGB frames of a clip (the first `max_frames` when > 0)."""
    frames = []
    if clip.kind == "frames":
        import imageio.v3 as iio
        names = sorted((f for f in os.listdir(clip.path) if f.lower().endswith(IMAGE_SUFFIXES)),
                       key=_natural_key)
        for f in names[:max_frames or None]:
            frames.append(_rgb(np.asarray(iio.imread(os.path.join(clip.path, f))),
                               os.path.join(clip.path, f)))
    else:
        import av
        try:
            with av.open(clip.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if max_frames and len(frames) >= max_frames:
                        break
        except (av.error.FFmpegError, IndexError) as e:
            raise ValueError(f"{clip.path}: cannot decode video ({type(e).__name__}: {e})") from e
    if not frames:
        raise ValueError(f"{clip.path}: no frames")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise ValueError(f"{clip.path}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------
# Batched, jitted feature extraction
# ---------------------------------------------------------------------------------------------


class _Batched:
    """`fn(params, *arrays)` over the arrays' leading axis in fixed-size batches (the last one
    padded), so each input shape compiles once; outputs concatenated (a dict of arrays or one
    array). The params are an argument of the jitted function, not constants baked into it."""

    def __init__(self, fn, batch_size: int, params=None):
        self.fn = jax.jit(fn)
        self.params = params
        self.batch_size = max(1, int(batch_size))

    def __call__(self, *arrays):
        n = len(arrays[0])
        outs = []
        for start in range(0, n, self.batch_size):
            chunk = [a[start:start + self.batch_size] for a in arrays]
            pad = self.batch_size - len(chunk[0])
            if pad:
                chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunk]
            out = jax.device_get(self.fn(self.params, *chunk))
            outs.append(jax.tree.map(lambda x: np.asarray(x)[:self.batch_size - pad], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def _unit(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 255.0


def _pixel_fn(_, a, b):
    return {"psnr": vm.psnr(a, b), "ssim": vm.ssim(a, b)}


def _lpips_fn(module):
    """LPIPS of [0, 1] frame pairs (the net takes [-1, 1])."""
    return lambda params, a, b: module.apply({"params": params}, 2 * a - 1, 2 * b - 1)


def _net_fn(module, resolution, output=None):
    """Inception / I3D outputs of [0, 1] frames or clips at the given input resolution."""
    def fn(params, x):
        out = module.apply({"params": params}, x, resolution=int(resolution))
        return out if output is None else out[output]
    return fn


class _Evaluator:
    def __init__(self, config, metrics):
        self.config, self.metrics = config, metrics
        bs = config.batch_size
        self.pixel = _Batched(_pixel_fn, bs)
        self.weights = {}
        nets = {NET_OF_METRIC[m] for m in metrics if m in NET_OF_METRIC}
        loaded = {kind: load_feature_net(resolve_weights(config, kind), kind)
                  for kind in sorted(nets)}
        for kind, (_, _, net_config) in loaded.items():
            self.weights[kind] = {"path": os.path.abspath(resolve_weights(config, kind)),
                                  **{k: v for k, v in net_config.items() if k != "kind"}}
        if "lpips" in loaded:
            module, params, _ = loaded["lpips"]
            self.lpips = _Batched(_lpips_fn(module), bs, params)
        if "inception" in loaded:
            module, params, _ = loaded["inception"]
            self.inception = _Batched(_net_fn(module, config.fid_resolution, "pool"), bs, params)
        if "i3d" in loaded:
            module, params, _ = loaded["i3d"]
            self.i3d = _Batched(_net_fn(module, config.fvd_resolution), config.video_batch_size,
                                params)

    def clip(self, name, gen: np.ndarray, gt: np.ndarray, acc: dict, notes: list) -> dict:
        c = self.config
        if len(gen) != len(gt):
            notes.append(f"{name}: {len(gen)} generated vs {len(gt)} ground-truth frames; "
                         f"the first {min(len(gen), len(gt))} compared")
        n = min(len(gen), len(gt))
        g, t = _unit(gen[:n]), _unit(gt[:n])
        if c.frame_size:
            size = tuple(int(s) for s in c.frame_size)
            g, t = resize_bilinear(g, size), resize_bilinear(t, size)
        elif g.shape[1:3] != t.shape[1:3]:
            notes.append(f"{name}: generated {g.shape[2]}x{g.shape[1]} resized to the "
                         f"ground truth's {t.shape[2]}x{t.shape[1]}")
            g = resize_bilinear(g, t.shape[1:3])
        g, t = np.clip(g, 0.0, 1.0), np.clip(t, 0.0, 1.0)
        row = {"frames": int(n)}
        if {"psnr", "ssim"} & set(self.metrics):
            px = self.pixel(g, t)
            for m in ("psnr", "ssim"):
                if m in self.metrics:
                    acc[m].append(px[m])
                    row[m] = float(np.mean(px[m]))
        if "lpips" in self.metrics:
            d = self.lpips(g, t)
            acc["lpips"].append(d)
            row["lpips"] = float(np.mean(d))
        if "fid" in self.metrics:
            step = max(1, int(c.fid_frame_stride))
            acc["fid_gen"].append(self.inception(g[::step]))
            acc["fid_gt"].append(self.inception(t[::step]))
        if {"fvd", "fid_vid"} & set(self.metrics):
            length, stride = int(c.fvd_frames), max(1, int(c.fvd_stride))
            starts = list(range(0, n - length + 1, stride))
            if not starts:
                notes.append(f"{name}: {n} frames, fewer than fvd_frames={length}: "
                             "not in FVD / FID-VID")
            else:
                fg = self.i3d(np.stack([g[s:s + length] for s in starts]))
                ft = self.i3d(np.stack([t[s:s + length] for s in starts]))
                acc["fvd_gen"].append(fg[c.fvd_features])
                acc["fvd_gt"].append(ft[c.fvd_features])
                acc["vid_gen"].append(fg[c.fid_vid_features].mean(0, keepdims=True))
                acc["vid_gt"].append(ft[c.fid_vid_features].mean(0, keepdims=True))
                row["segments"] = len(starts)
        return row


def _fd(acc: dict, gen: str, gt: str, what: str, notes: list):
    if not acc[gen]:
        notes.append(f"{what}: no samples")
        return None
    a, b = np.concatenate(acc[gen]), np.concatenate(acc[gt])
    if len(a) < 2:
        notes.append(f"{what}: {len(a)} sample(s) per side, a covariance needs at least 2")
        return None
    if len(a) <= a.shape[1]:
        notes.append(f"{what}: {len(a)} samples for {a.shape[1]}-dimensional features "
                     "(singular covariance; the value is biased)")
    return vm.frechet_distance_from_features(a, b)


def check_config(config) -> tuple[str, ...]:
    metrics = tuple(config.metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown} (choose from {', '.join(METRICS)})")
    for field in ("fvd_features", "fid_vid_features"):
        if config[field] not in I3D_OUTPUTS:
            raise ValueError(f"{field}={config[field]!r}: expected one of {I3D_OUTPUTS}")
    return metrics


def evaluate(config) -> dict:
    """Evaluates the configured folders; returns the report dict."""
    metrics = check_config(config)
    gen_dir, gt_dir = resolve_dir(config, "generated_dir"), resolve_dir(config, "ground_truth_dir")
    pairs = pair_clips(find_clips(gen_dir, "generated_dir"),
                       find_clips(gt_dir, "ground_truth_dir"))
    evaluator = _Evaluator(config, metrics)
    acc = {k: [] for k in ("psnr", "ssim", "lpips", "fid_gen", "fid_gt", "fvd_gen", "fvd_gt",
                           "vid_gen", "vid_gt")}
    notes, per_clip = [], {}
    for name, gen, gt in pairs:
        per_clip[name] = evaluator.clip(name, read_clip(gen, config.max_frames),
                                        read_clip(gt, config.max_frames), acc, notes)
    summary = {}
    for m in ("psnr", "ssim", "lpips"):
        if m in metrics:
            summary[m] = float(np.mean(np.concatenate(acc[m])))
    if "fid" in metrics:
        summary["fid"] = _fd(acc, "fid_gen", "fid_gt", "fid", notes)
    if "fvd" in metrics:
        summary["fvd"] = _fd(acc, "fvd_gen", "fvd_gt", "fvd", notes)
    if "fid_vid" in metrics:
        summary["fid_vid"] = _fd(acc, "vid_gen", "vid_gt", "fid_vid", notes)
    return {"name": config.name, "generated_dir": os.path.abspath(gen_dir),
            "ground_truth_dir": os.path.abspath(gt_dir), "clips": len(pairs),
            "frames": int(sum(r["frames"] for r in per_clip.values())),
            "metrics": summary, "per_clip": per_clip, "notes": notes,
            "settings": {"fid_resolution": int(config.fid_resolution),
                         "fid_frame_stride": int(config.fid_frame_stride),
                         "fvd_resolution": int(config.fvd_resolution),
                         "fvd_frames": int(config.fvd_frames), "fvd_stride": int(config.fvd_stride),
                         "fvd_features": config.fvd_features,
                         "fid_vid_features": config.fid_vid_features,
                         "frame_size": list(config.frame_size or ()),
                         "max_frames": int(config.max_frames)},
            "weights": evaluator.weights}


def default_report_path(config) -> str:
    return os.path.join(str(config.data_root) or ".", f"eval_video_{config.name}.json")


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)                     # "inf" (identical frames' PSNR), "nan"
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_safe(report), f, indent=1, allow_nan=False)


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _grid(lines: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]


def format_table(report: dict) -> str:
    """The summary row, then PSNR / SSIM / LPIPS per clip, then the notes."""
    summary = report["metrics"]
    keys = [m for m in METRICS if m in summary]
    text = _grid([["benchmark", "clips", "frames"] + keys,
                  [report["name"], str(report["clips"]), str(report["frames"])]
                  + [_cell(summary[m]) for m in keys]])
    per = [m for m in ("frames", "psnr", "ssim", "lpips") if any(m in r for r in
                                                                 report["per_clip"].values())]
    if report["per_clip"] and len(per) > 1:
        text += [""] + _grid([["clip"] + per] + [[name] + [_cell(r.get(m)) for m in per]
                                                 for name, r in report["per_clip"].items()])
    text += [f"note: {n}" for n in report["notes"]]
    return "\n".join(text)
