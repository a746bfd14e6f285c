"""Config-driven evaluation of a 4DMoT tokenizer on motion datasets.

For every dataset in the config: read the clips, cut them into segments, tokenise and decode
with the checkpoint, and compute the configured metrics over all segments. The report is a dict
(written as JSON) with one entry per dataset; `format_table` renders it for a terminal.

Datasets of `source="files"` are users' motion files, which only the data pipeline's readers
(`data_pipeline.readers`, a layer above this one) understand in all their formats: the caller
passes `read_files(path) -> (clips, errors)`; `mtvjax eval` passes those readers.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from mtvjax.data.skeleton import JOINT_NAMES
from mtvjax.data.synthetic_motion import SyntheticMotionSource
from mtvjax.evaluate import metrics as M
from mtvjax.models.fourdmot.tokenizer import Tokenizer, segment_motion

Clips = list[tuple[str, np.ndarray]]             # (name, [T, 24, 3] motion in mm)
FileReader = Callable[[str], tuple[Clips, list[str]]]  # path -> (clips, unreadable-file errors)

# Metrics of reconstructed vs input motion, each a pure function of ([N, T, 24, 3] x2).
MOTION_METRICS = {
    "mpjpe": M.mpjpe,
    "root_mpjpe": M.root_aligned_mpjpe,
    "pa_mpjpe": M.pa_mpjpe,
    "accel_error": M.acceleration_error,
}


def read_dataset(spec, read_files: FileReader | None = None) -> tuple[Clips, list[str]]:
    """(name, motion) clips of one dataset spec, and the errors of files that were skipped."""
    if spec["source"] == "synthetic":
        source = SyntheticMotionSource(spec.get("sequences", 32))
        return [(source[i].name, source[i].motion) for i in range(len(source))], []
    if spec["source"] == "files":
        if read_files is None:
            raise ValueError(f"dataset {spec['name']}: source 'files' needs a motion file reader "
                             "(evaluate(config, read_files=...); `mtvjax eval` passes one)")
        return read_files(spec["path"])
    raise ValueError(f"dataset {spec['name']}: unknown source {spec['source']!r} (files, synthetic)")


def evaluate_dataset(tokenizer: Tokenizer, spec, frames: int, stride: int, metric_names,
                     read_files: FileReader | None = None) -> dict:
    clips, errors = read_dataset(spec, read_files)
    segments, too_short = [], []
    for name, motion in clips:
        try:
            segments.append(segment_motion(motion, frames, stride, name)[0])
        except ValueError as e:
            too_short.append(str(e))
    if not segments:
        raise ValueError(f"dataset {spec['name']}: no clip has {frames} frames at stride {stride}"
                         f" ({len(clips)} clips read, {len(errors)} unreadable files)")
    out = tokenizer.tokenize(np.concatenate(segments))
    motion = np.concatenate(segments)[..., :out["recon_mm"].shape[-1]]   # (x, y) if no depth
    report = {"clips": len(clips) - len(too_short), "segments": int(len(motion)),
              "skipped": errors + too_short}
    for name in metric_names:
        if name in MOTION_METRICS:
            report[name + "_mm"] = float(MOTION_METRICS[name](out["recon_mm"], motion))
    if "per_joint_mpjpe" in metric_names:
        per_joint = np.asarray(M.per_joint_mpjpe(out["recon_mm"], motion))
        report["per_joint_mpjpe_mm"] = dict(zip(JOINT_NAMES, map(float, per_joint)))
    if not tokenizer.switches.quantize:          # continuous tokens: no code usage to report
        return report
    histogram = M.code_histogram(out["indices"], tokenizer.codebook_size)
    if "perplexity" in metric_names:
        report["perplexity"] = float(M.perplexity(histogram))
    if "active_codes" in metric_names:
        report["active_codes"] = float(M.active_code_fraction(histogram))
    if "code_usage" in metric_names:
        report["code_histogram"] = np.asarray(histogram).tolist()
    return report


def evaluate(config, read_files: FileReader | None = None) -> dict:
    """The report of `config`'s checkpoint on its datasets; `read_files` reads `files` datasets."""
    if not config.checkpoint:
        raise ValueError("no checkpoint: pass --config.checkpoint=DIR")
    tokenizer = Tokenizer(config.checkpoint, batch_size=config.batch_size)
    tokenizer.check_frames(config.frames)
    report = {"checkpoint": os.path.abspath(config.checkpoint), "step": tokenizer.step,
              "frames": config.frames, "stride": config.stride, "datasets": {}}
    for spec in config.datasets:
        report["datasets"][spec["name"]] = evaluate_dataset(
            tokenizer, spec, config.frames, config.stride, tuple(config.metrics), read_files)
    return report


def write_report(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)


def format_table(report: dict) -> str:
    """Scalar metrics per dataset, one row each, plus the worst joints."""
    columns = ["clips", "segments", "mpjpe_mm", "root_mpjpe_mm", "pa_mpjpe_mm", "accel_error_mm",
               "perplexity", "active_codes"]
    rows = report["datasets"]
    present = [c for c in columns if any(c in r for r in rows.values())]
    header = ["dataset"] + present
    lines = [header]
    for name, r in rows.items():
        lines.append([name] + [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                               for c in present])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    for name, r in rows.items():
        if "per_joint_mpjpe_mm" in r:
            worst = sorted(r["per_joint_mpjpe_mm"].items(), key=lambda kv: -kv[1])[:3]
            text.append(f"{name}: worst joints " + ", ".join(f"{j} {v:.1f} mm" for j, v in worst))
        if r["skipped"]:
            text.append(f"{name}: skipped {len(r['skipped'])} (first: {r['skipped'][0]})")
    return "\n".join(text)
