"""Batch generation over a benchmark with the models loaded once: `mtvjax generate`.

  generate(config) → for each entry (mtvjax/sample/benchmark_entries.py) of this process's share
  OUT/generated/<id>.mp4 or OUT/generated/<id>/00000.png ...   the generated clip
  OUT/generated/<id>.json                                      config, seed, checkpoint ids,
                                                               timings; "complete": true
  OUT/ground_truth/<id>/00000.png ...                          the driving video's frames at
                                                               the generated frames' source
                                                               positions, same size and crop

which is the layout `configs/eval_video.py` reads with `data_root=OUT`. Every entry is checked
(files, ids, motion length, reference) before any model loads. Process `MTVJAX_PROCESS_ID` of
`MTVJAX_NUM_PROCESSES` takes the entries i with i % count == index; its entries run grouped by
output shape so each compiled sampler is reused (one clip at a time on one device; batching
same-shape clips over local devices is left for later).

Resuming: an entry whose JSON says complete (and whose outputs exist) is skipped, so a rerun only
makes what is missing. Every output is written under a temporary hidden name and renamed into
place (`os.replace`), the JSON last: a killed run leaves no partial final file. An OUT made with
other generation settings is refused rather than mixed. The same config and seed give the same
frames.

With `evaluate.enabled` the first process, once every entry is complete, runs the video
evaluation on OUT and writes the paper's table (`results_table`).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from tqdm.auto import tqdm

from mtvjax.checkpoint.converted import checkpoint_id
from mtvjax.parallel.distributed import process_slot
from mtvjax.sample import reference_image as RI
from mtvjax.sample.animate import (AnimateSession, check_checkpoints, driving_video_frames,
                                   plan_for, read_driving)
from mtvjax.sample.animator_common import attention_kernel
from mtvjax.sample.benchmark_entries import Entry, check_entries, read_entries
from mtvjax.sample.driving import DrivingMotion, reconstruction_warnings
from mtvjax.viz.skeleton_video import write_video

GENERATED, GROUND_TRUTH = "generated", "ground_truth"
OUTPUT_FORMATS = ("png", "mp4")
NOT_SETTINGS = ("evaluate", "entries", "out")   # config fields that do not change the frames


@dataclasses.dataclass
class Job:
    """One entry of this process, checked and ready to sample."""
    entry: Entry
    reference_u8: np.ndarray           # at the generation size
    drive: DrivingMotion
    video: str | None                  # driving video (file or frame folder) for ground truth
    seed: int
    prompt: str

    @property
    def shape(self) -> tuple:
        return self.reference_u8.shape


def settings_hash(config) -> str:
    """sha256 of the config fields that decide the generated frames."""
    settings = json.loads(config.to_json_best_effort())
    for name in NOT_SETTINGS:
        settings.pop(name, None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def output_paths(out: Path, entry_id: str, fmt: str) -> dict:
    video = out / GENERATED / (entry_id + (".mp4" if fmt == "mp4" else ""))
    return {"video": video, "json": out / GENERATED / f"{entry_id}.json",
            "ground_truth": out / GROUND_TRUTH / entry_id}


def read_record(paths: dict) -> dict | None:
    """The entry's JSON when it says complete and its outputs exist, else None."""
    try:
        record = json.loads(paths["json"].read_text())
    except (OSError, ValueError):
        return None
    if not record.get("complete") or not paths["video"].exists():
        return None
    if record.get("ground_truth") and not paths["ground_truth"].is_dir():
        return None
    return record


def fit_frames(frames: np.ndarray, size: tuple, resolution) -> np.ndarray:
    """Frames brought to the generated size as the reference was: resize and centre-crop for a
    fixed resolution, plain resize to the bucket for (0, 0)."""
    fit = RI.resize if tuple(int(v) for v in resolution) == (0, 0) else RI.resize_centre_crop
    return np.stack([fit(f, tuple(size)) for f in frames])


def prepare(config, entry: Entry, frames: int) -> Job:
    """Reads and checks an entry's motion, video and reference (errors name the entry)."""
    controls = config.motion.copy_and_resolve_references()
    controls.clip = controls.clip if entry.clip is None else entry.clip
    controls.start = controls.start if entry.start is None else entry.start
    try:
        drive = read_driving(config, entry.motion, frames, controls)
        video = entry.video or drive.video_path
        if video is not None and not os.path.exists(video):
            video = None
        if entry.reference is not None:
            image = RI.load_image(entry.reference)
        elif video is not None:
            image = driving_video_frames(video, drive.source_frames[:1])[0]
        else:
            raise ValueError("no reference image and no driving video to take the first frame "
                             "from")
        reference_u8 = RI.fit_reference(image, tuple(config.video.resolution),
                                        config.video.bucket_base)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{entry.where}: {e}") from None
    return Job(entry, reference_u8, drive, video,
               int(config.seed if entry.seed is None else entry.seed),
               config.prompt if entry.prompt is None else entry.prompt)


def _checkpoint_ids(config) -> dict:
    ids = {}
    for name in ("mvdit", "tokenizer", "vae", "clip", "text_encoder"):
        folder = config.checkpoints.get(name)
        if folder and os.path.isdir(folder):
            ids[name] = {"path": os.path.abspath(folder), "id": checkpoint_id(folder)}
    return ids


def _write_pngs(frames: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        iio.imwrite(folder / f"{i:05d}.png", frame)


def _put(write, final: Path, entry_id: str, suffix: str = "") -> None:
    """`write(tmp)` then rename `tmp` to `final` (replacing an incomplete earlier output)."""
    tmp = final.parent / f".{entry_id}.tmp{os.getpid()}{suffix}"
    write(tmp)
    if final.is_dir():
        shutil.rmtree(final)   # this command's own output of an unfinished earlier run
    os.replace(tmp, final)


def _remove_temporaries(out: Path, entry_id: str) -> None:
    """Leftovers of a killed run's writes of this entry."""
    for folder in (out / GENERATED, out / GROUND_TRUTH):
        for path in glob.glob(str(folder / f".{glob.escape(entry_id)}.tmp*")):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def write_entry(config, out: Path, job: Job, result, common: dict) -> dict:
    """Writes one entry's outputs (JSON last); returns its record."""
    fmt = config.output.generated
    paths = output_paths(out, job.entry.id, fmt)
    _remove_temporaries(out, job.entry.id)
    (out / GENERATED).mkdir(parents=True, exist_ok=True)
    video_u8 = result.video_u8
    if fmt == "mp4":
        _put(lambda tmp: write_video(video_u8, tmp, config.video.fps), paths["video"],
             job.entry.id, ".mp4")
    else:
        _put(lambda tmp: _write_pngs(video_u8, tmp), paths["video"], job.entry.id)
    ground_truth = bool(config.output.ground_truth and job.video)
    if ground_truth:
        truth = fit_frames(driving_video_frames(job.video, job.drive.source_frames),
                           video_u8.shape[1:3], config.video.resolution)
        (out / GROUND_TRUTH).mkdir(parents=True, exist_ok=True)
        _put(lambda tmp: _write_pngs(truth, tmp), paths["ground_truth"], job.entry.id)
    warnings = ([] if result.window_mpjpe_mm is None else reconstruction_warnings(
        result.window_mpjpe_mm, float(config.motion.mpjpe_warn_mm)))
    record = {"complete": True, "id": job.entry.id, "entry": dataclasses.asdict(job.entry),
              "video": str(paths["video"]),
              "ground_truth": str(paths["ground_truth"]) if ground_truth else None,
              "seed": job.seed, "prompt": job.prompt, "frames": int(len(video_u8)),
              "height": int(video_u8.shape[1]), "width": int(video_u8.shape[2]),
              "motion": job.drive.name, "source_fps": job.drive.source_fps,
              "source_frames": [float(f) for f in job.drive.source_frames],
              "window_mpjpe_mm": result.window_mpjpe_mm, "warnings": warnings,
              "seconds": result.seconds, "steps": result.steps, **common}
    _put(lambda tmp: tmp.write_text(json.dumps(record, indent=1)), paths["json"],
         job.entry.id, ".json")
    return record


def check_config(config) -> None:
    if not config.entries:
        raise ValueError("entries is not set: --config.entries=LIST.jsonl|LIST.csv|FOLDER")
    if not config.out:
        raise ValueError("out is not set: --config.out=FOLDER")
    if config.output.generated not in OUTPUT_FORMATS:
        raise ValueError(f"output.generated={config.output.generated!r}: use "
                         f"{' or '.join(OUTPUT_FORMATS)}")
    if config.evaluate.enabled and not config.output.ground_truth:
        raise ValueError("evaluate.enabled needs output.ground_truth=True")
    attention_kernel(config)


def _check_prompts(config, jobs: list[Job]) -> None:
    from mtvjax.models.mvdit import registry
    fixed = not registry.family(config.family).HAS_TEXT or bool(config.prompt_embeddings)
    for job in jobs:
        if fixed and job.entry.prompt is not None and job.entry.prompt != config.prompt:
            raise ValueError(f"{job.entry.where}: a prompt per entry needs the 17B with a text "
                             "encoder (this config has no text input or fixed prompt_embeddings)")


def _check_same_settings(out: Path, ids, digest: str) -> None:
    for entry_id in ids:
        path = out / GENERATED / f"{entry_id}.json"
        try:
            old = json.loads(path.read_text()).get("settings_hash")
        except (OSError, ValueError):
            continue
        if old is not None and old != digest:
            raise ValueError(f"{path}: {out} holds outputs of other generation settings; use "
                             "another --config.out (or delete that folder yourself)")


def generate(config, progress: bool = True, process=None) -> dict:
    """Generates this process's missing entries; returns a report (also written as
    OUT/generate_process<index>of<count>.json)."""
    check_config(config)
    index, count = process or process_slot()
    out = Path(os.path.expanduser(str(config.out)))
    entries = read_entries(config.entries)
    check_entries(entries)
    mine = entries[index::count]
    digest = settings_hash(config)
    _check_same_settings(out, [e.id for e in mine], digest)
    fmt = config.output.generated
    done = [e.id for e in mine if read_record(output_paths(out, e.id, fmt))]
    plan = plan_for(config)
    jobs = [prepare(config, e, plan.frames) for e in mine if e.id not in done]
    _check_prompts(config, jobs)
    if config.evaluate.enabled:
        missing = [j.entry.where for j in jobs if not j.video]
        if missing:
            raise ValueError(f"{missing[0]}: evaluation needs ground truth: no driving video")
    jobs.sort(key=lambda j: j.shape)    # stable: same-shape clips run together
    report = {"process": [index, count], "generated": [], "skipped": done, "warnings": {},
              "load_seconds": 0.0, "seconds_per_entry": None}
    if jobs:
        check_checkpoints(config)
        started = time.perf_counter()
        session = AnimateSession(config, progress=False)
        report["load_seconds"] = time.perf_counter() - started
        common = {"settings_hash": digest, "config": json.loads(config.to_json_best_effort()),
                  "checkpoints": _checkpoint_ids(config)}
        bar = tqdm(jobs, desc="generate", unit="clip", disable=not progress)
        started = time.perf_counter()
        for job in bar:
            bar.set_postfix_str(job.entry.id)
            session.use_prompt(job.prompt)
            result = session.run(job.reference_u8, job.drive.motion, job.seed)
            record = write_entry(config, out, job, result, common)
            report["generated"].append(job.entry.id)
            if record["warnings"]:
                report["warnings"][job.entry.id] = record["warnings"]
                for w in record["warnings"]:
                    bar.write(f"warning: {job.entry.id}: {w}")
        report["seconds_per_entry"] = (time.perf_counter() - started) / len(jobs)
    out.mkdir(parents=True, exist_ok=True)
    if config.evaluate.enabled and index == 0:
        incomplete = [e.id for e in entries if not read_record(output_paths(out, e.id, fmt))]
        if incomplete:
            report["evaluation"] = (f"skipped: {len(incomplete)} entries not complete yet (e.g. "
                                    f"{incomplete[0]}); rerun when every process has finished")
        else:
            report["evaluation"] = evaluate_outputs(config, out)
    path = out / f"generate_process{index}of{count}.json"
    _put(lambda tmp: tmp.write_text(json.dumps(report, indent=1)), path, path.stem, ".json")
    return report


def evaluate_outputs(config, out: Path) -> dict:
    """eval_video on OUT, its report beside the clips, and a row of the results table."""
    from mtvjax.evaluate.video_eval import default_report_path, evaluate, write_report
    from mtvjax.evaluate.results_table import add_row
    ev = config.evaluate.video.copy_and_resolve_references()
    ev.data_root, ev.generated_dir, ev.ground_truth_dir = str(out), GENERATED, GROUND_TRUTH
    report = evaluate(ev)
    report_path = ev.report or default_report_path(ev)
    write_report(report, report_path)
    table = str(config.evaluate.table or out / "results")
    ids = _checkpoint_ids(config)
    label = (f"{config.name} {config.family} "
             + " ".join(f"{k}:{v['id'][:8]}" for k, v in ids.items() if k == "mvdit")
             + f" {int(config.sampling.steps)} steps, seed {int(config.seed)}")
    add_row(table, label, report, {"config": config.name, "family": config.family,
                                   "checkpoints": ids, "out": str(out.absolute())})
    return {"report": report_path, "table": table + ".md", "metrics": report["metrics"]}
