"""Real video windows → MV-DiT latent records (`latents.renderer="vae"`), in parts, merged.

    python -m data_pipeline.latents --config configs/data/real_videos.py:7b [--config.KEY=...]

For every window × crop of `data_pipeline.video_windows` one latent record
(`mtvjax.data.latent_records`) holds, for the family's MV-DiT:

* `latents` / `latents_logvar`: the VAE posterior (mean, log-variance) of the window's frames in
  the model's latent space (`encode_posterior`: the 7B's scaled space, `latents.tiling` for its
  tiled encoder; the 17B's normalised space); the trainer draws x0 from it;
* `ref_latents`: the window's first frame as the model's reference input, by the function
  `mtvjax animate` uses (one definition): the 7B's `reference_latents` (a posterior sample with
  a key seeded per record, `reference_key`), the 17B's `image_condition` without its mask
  channels; the 17B's `image`: `clip_features` of that frame;
* the 17B's `text`: umT5 embeddings of the clip's caption (`captions.path`, a JSON object
  {clip key, source id or video path: caption}, else `captions.default_prompt`), each distinct
  caption encoded once (`data_pipeline.text_cache`, or `captions.embeddings`);
* `motion`, `first_joints` and, with `checkpoints.tokenizer`, 4DMoT `motion_tokens`.

Several processes share the work: process MTVJAX_PROCESS_ID of MTVJAX_NUM_PROCESSES (default
0 of 1, the launch scripts' environment) takes every count-th clip and writes its part,
`OUTPUT.parts/part-K-of-N/` (a temporary folder renamed when complete, so a finished part is
skipped when the build is run again). Process 0 merges once every part is there (else
`merge_only=True` does it later): the dataset `OUTPUT` (`shard_writer.write_dataset`: temporary
folder + rename, replacing only an earlier build) holds the parts' shards (`train/`, `val/`),
`manifest.json` (kind "mvdit_latents", index, per-file bad inputs with their reasons, counts,
clips/s), `mean.npy`/`std.npy` of the train windows' motion and, for the 17B, `text_cache/`
with the captions and the negative prompt; the parts folder is then removed (a failed merge
keeps it for the next try; a part built with other settings is rebuilt, not reused). Within a
process the windows' VAE posteriors are encoded data-parallel, one window per local device per
call (`video_encoders.FamilyEncoders.posteriors`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import av
import grain
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from mtvjax.data.latent_records import decode_latent_record, encode_latent_record
from mtvjax.data.latent_shard_source import KIND, MANIFEST_VERSION
from mtvjax.data.stats import compute_stats
from mtvjax.data.text_embeddings import CACHE_DIR, TextCache
from mtvjax.models.mvdit import registry
from mtvjax.parallel.distributed import process_slot

from data_pipeline import text_cache
from data_pipeline.build import Report
from data_pipeline.motion_tokens import tokenize_windows
from data_pipeline.output_folder import make_temp, remove_stale
from data_pipeline.shard_writer import SPLITS, SplitWriter, write_dataset
from data_pipeline.video_encoders import FamilyEncoders
from data_pipeline.video_windows import VideoClip, clip_windows, iter_video_clips, window_key

LATENT_DTYPES = {"float32": "<f4", "float16": "<f2"}
PART_INFO = "part.json"


def parts_folder(config) -> Path:
    out = Path(config.output).absolute()
    return out.parent / f"{out.name}.parts"


def part_folder(config, index: int, count: int) -> Path:
    return parts_folder(config) / f"part-{index:05d}-of-{count:05d}"


def settings(config) -> dict:
    """The config as stored in parts and the manifest (without `output` and `merge_only`): a
    part is reused only by a build of the same settings."""
    return {k: v for k, v in json.loads(config.to_json()).items()
            if k not in ("output", "merge_only")}


def _part_info(folder: Path, config) -> dict | None:
    """The info of the finished part `folder` when it was built with `config`'s settings."""
    path = folder / PART_INFO
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    return info if info.get("config") == settings(config) else None


def reference_key(seed: int, key: str) -> jax.Array:
    """The 7B reference posterior's sampling key of record `key`."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
    return jax.random.PRNGKey(int.from_bytes(digest[:4], "little"))


def text_config(config) -> ml_collections.ConfigDict:
    """The `data_pipeline.text_cache` section of a video latent config."""
    c = config.captions
    return ml_collections.ConfigDict(dict(
        enabled=registry.family(config.family).HAS_TEXT, encoder=config.checkpoints.text_encoder,
        tokenizer=config.checkpoints.text_tokenizer, dtype=c.dtype, batch_size=int(c.batch_size),
        prompts=c.path, embeddings=c.embeddings, default_prompt=c.default_prompt,
        negative_prompt=c.negative_prompt, store_dtype=c.store_dtype,
        shard_records=int(config.shard_records)))


def clip_entry(vc: VideoClip) -> dict:
    """What captions are looked up by (`text_cache.resolve_prompts`)."""
    return {"key": vc.clip.key, "clip": vc.clip.key, "source_id": vc.clip.record.source_id,
            "video_path": vc.video}


def clip_texts(config, clips: list[VideoClip], folder: Path) -> dict[str, np.ndarray]:
    """{clip key: caption embedding} for the 17B (empty for the 7B); each distinct caption and
    the negative prompt encoded once into the text cache `folder`."""
    text = text_config(config)
    if not text.enabled or not clips:
        return {}
    prompts = text_cache.load_prompts(text.prompts) if text.prompts else {}
    captions, _ = text_cache.resolve_prompts([clip_entry(vc) for vc in clips], prompts,
                                             text.default_prompt)
    wanted = list(captions.values()) + ([text.negative_prompt] if text.negative_prompt else [])
    keys, _ = text_cache.encode_prompts(wanted, folder, text_cache.make_encoder(text),
                                        store_dtype=text.store_dtype,
                                        shard_records=text.shard_records)
    cache = TextCache(folder)
    try:
        return {clip: cache.get(keys[caption]) for clip, caption in captions.items()}
    finally:
        cache.close()


def _clip_crops(vc: VideoClip, frames: int, config, report: Report):
    """`video_windows.clip_windows` of a clip; a video that cannot be decoded to the end goes
    into `report` and the clip's remaining windows are left out."""
    try:
        yield from clip_windows(vc, frames, int(config.crops_per_window), int(config.seed))
    except (ValueError, OSError, av.FFmpegError) as e:
        report.errors.append({"path": vc.video, "message": f"{vc.clip.key}: unreadable video "
                              f"frames: {e}"})


def _groups(items, size: int):
    """Lists of up to `size` consecutive items."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _write_part(config, tmp: Path, index: int, count: int, progress: bool) -> dict:
    report = Report()
    clips = list(iter_video_clips(config, report, index, count))
    texts = clip_texts(config, clips, tmp / CACHE_DIR)
    encoders = FamilyEncoders(config) if clips else None
    tokenizer = None
    if config.checkpoints.tokenizer and clips:
        from mtvjax.models.fourdmot.tokenizer import Tokenizer
        tokenizer = Tokenizer(config.checkpoints.tokenizer)
    frames, dtype = int(config.frames), LATENT_DTYPES[config.latents.dtype]
    writers = {s: SplitWriter(tmp / s, s, config.shard_records) for s in SPLITS}
    entries = {s: [] for s in SPLITS}
    start_time = time.perf_counter()
    bar = tqdm(clips, unit="clip", desc=f"part {index + 1}/{count}", disable=not progress,
               file=sys.stderr)
    for vc in bar:
        record, split = vc.clip.record, vc.clip.split
        motions = np.stack([record.motion[s:s + frames] for s in vc.starts])
        tokens = None if tokenizer is None else tokenize_windows(tokenizer, motions)
        for group in _groups(_clip_crops(vc, frames, config, report), encoders.devices):
            posteriors = encoders.posteriors([pixels for *_, pixels in group])
            for (w, start, c, box, pixels), (mean, logvar) in zip(group, posteriors):
                key = window_key(vc.clip.key, start, c)
                ref, image = encoders.conditioning(pixels[0], frames,
                                                   reference_key(int(config.seed), key))
                window_tokens = None if tokens is None else tokens[w]
                text = texts.get(vc.clip.key)
                writers[split].write(encode_latent_record(
                    key=key, source_id=record.source_id, latents=mean, latents_logvar=logvar,
                    ref_latents=ref, motion=motions[w], fps=record.fps,
                    motion_tokens=window_tokens, text=text, image=image, latent_dtype=dtype,
                    first_joints=motions[w][0]))
                first = int(record.frame_indices[start])
                entries[split].append({
                    "key": key, "clip": vc.clip.key, "source_id": record.source_id,
                    "video_path": vc.video, "start": int(start), "crop_index": c,
                    "video_frames": [first, first + frames], "crop": list(box),
                    "latent_shape": list(mean.shape),
                    "token_width": None if window_tokens is None else int(window_tokens.shape[1]),
                    "text_rows": 0 if text is None else int(text.shape[0])})
    bar.close()
    return {"part": index, "parts": count, "config": settings(config), "clips": len(clips),
            "seconds": round(time.perf_counter() - start_time, 3),
            "errors": report.errors, "skipped": report.skipped, "index": entries,
            "shards": {s: writers[s].close(tmp) for s in SPLITS}, "text": bool(texts)}


def build_part(config, index: int, count: int, progress: bool = True) -> dict:
    """Writes part `index` of `count` (skipped when it is complete with the same settings; one
    of other settings is replaced); returns its info."""
    folder = part_folder(config, index, count)
    info = _part_info(folder, config)
    if info is not None:
        return {**info, "reused": True}
    if (folder / PART_INFO).is_file():
        shutil.rmtree(folder)              # a finished part of other settings (ours: it has PART_INFO)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(folder)
    tmp = make_temp(folder)
    try:
        info = _write_part(config, tmp, index, count, progress)
        (tmp / PART_INFO).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n",
                                     encoding="utf-8")
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()          # a failed first part leaves no empty parts folder
    return info


def finished_parts(config) -> tuple[list[Path], list[str]]:
    """(the part folders of one process count, the names of those not finished with `config`'s
    settings)."""
    root = parts_folder(config)
    found = sorted(p for p in root.glob("part-*-of-*") if _part_info(p, config) is not None)
    counts = {p.name.rsplit("-", 1)[1] for p in found}
    if len(counts) > 1:
        raise ValueError(f"{root}: parts of several process counts ({sorted(counts)}); remove "
                         "the parts of the runs you do not want")
    if not found:
        return [], [f"{root}/part-*"]
    count = int(counts.pop())
    want = [root / f"part-{i:05d}-of-{count:05d}" for i in range(count)]
    return want, [p.name for p in want if p not in found]


def _unique(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _train_motion_stats(tmp: Path, shards: list[dict], entries: list[dict], errors: list) -> dict:
    """Mean/std of the train windows' motion (each window once, not once per crop)."""
    if not entries:
        reasons = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:3])
        raise ValueError(f"no window went to the train split, nothing to build "
                         f"({reasons or 'no clip has enough frames'})")
    records = grain.sources.ArrayRecordDataSource([str(tmp / s["file"]) for s in shards])
    return compute_stats(decode_latent_record(records[i])["motion"]
                         for i, e in enumerate(entries) if e["crop_index"] == 0)


def _merge_into(config, tmp: Path, parts: list[Path]) -> dict:
    infos = [json.loads((p / PART_INFO).read_text(encoding="utf-8")) for p in parts]
    index = {s: [] for s in SPLITS}
    shards = {s: [] for s in SPLITS}
    for part, info in zip(parts, infos):
        for s in SPLITS:
            index[s] += info["index"][s]
            for shard in info["shards"][s]:
                name = f"{s}/{part.name}-{Path(shard['file']).name}"
                _link(part / shard["file"], tmp / name)
                shards[s].append({"file": name, "records": shard["records"]})
    errors = _unique([e for i in infos for e in i["errors"]])
    stats = _train_motion_stats(tmp, shards["train"], index["train"], errors)
    for k, v in stats.items():
        np.save(tmp / f"{k}.npy", v)
    clips = sum(i["clips"] for i in infos)
    seconds = sum(i["seconds"] for i in infos)
    records = sum(len(v) for v in index.values())
    manifest = {
        "manifest_version": MANIFEST_VERSION, "name": config.name, "family": config.family,
        "config": settings(config), "errors": errors,
        "skipped": _unique([e for i in infos for e in i["skipped"]]),
        "splits": {s: {"records": len(index[s]), "shards": shards[s]} for s in SPLITS},
        "index": index,
        "counts": {"clips": clips, "records": records,
                   "windows": sum(e["crop_index"] == 0 for v in index.values() for e in v),
                   "parts": len(parts)},
        "throughput": {"seconds": round(seconds, 3),
                       "clips_per_s": round(clips / seconds, 4) if seconds else None},
        "statistics": {"mean_path": "mean.npy", "std_path": "std.npy",
                       "rope_mean_joints": stats["mean"].tolist()}}
    if any(i["text"] for i in infos):
        text_cache.text_step(text_config(config), tmp, manifest, text_cache.cached_encoder(
            [p / CACHE_DIR for p, i in zip(parts, infos) if i["text"]]))
    return manifest


def merge(config) -> dict:
    """Writes the dataset from the finished parts, then removes them; returns its manifest."""
    parts, missing = finished_parts(config)
    if missing:
        raise ValueError(f"cannot merge yet: part(s) {', '.join(missing[:5])} not finished")
    manifest = write_dataset(config.output, KIND, lambda tmp: _merge_into(config, tmp, parts))
    for part in parts:
        shutil.rmtree(part)
    try:
        parts_folder(config).rmdir()
    except OSError:
        pass                            # something else is in there: leave it
    return manifest


def check(config) -> None:
    family = registry.family(config.family).NAME
    if not config.merge_only:
        needed = ("vae", "clip") if family == "wan" else ("vae",)
        empty = [f"checkpoints.{k}" for k in needed if not config.checkpoints[k]]
        if empty:
            raise ValueError(f"{' and '.join(empty)} empty: the {family} build needs the "
                             "converted checkpoint(s) (mtvjax convert)")
    if config.latents.dtype not in LATENT_DTYPES:
        raise ValueError(f"latents.dtype must be one of {sorted(LATENT_DTYPES)} (latent records "
                         f"store <f4 or <f2), got {config.latents.dtype!r}")
    if int(config.frames) < 9 or (int(config.frames) - 1) % 8:
        raise ValueError(f"frames must be 8k + 1 (the VAE and 4DMoT latent frames agree), got "
                         f"{config.frames}")
    for name in ("window_stride", "crops_per_window"):
        if int(config[name]) < 1:
            raise ValueError(f"{name} must be at least 1, got {config[name]}")
    if int(config.windows_per_clip) < 0:
        raise ValueError(f"windows_per_clip must be >= 0 (0 = all), got {config.windows_per_clip}")
    if not config.output:
        raise ValueError("config.output (the dataset folder to write) is empty")
    if not config.merge_only and not config.inputs:
        raise ValueError("config.inputs (pose files or folders) is empty")


def build(config, process: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """This process's part, then (process 0, all parts finished, or `merge_only`) the merged
    dataset. Returns the manifest, or {"part": info, "missing": [...]} when not merged."""
    check(config)
    if config.merge_only:
        return merge(config)
    index, count = process or process_slot()
    info = build_part(config, index, count, progress)
    if index == 0:
        _, missing = finished_parts(config)
        if not missing:
            return merge(config)
    return {"part": info, "missing": finished_parts(config)[1]}


def report(config, result: dict) -> None:
    """Prints the bad inputs (stderr) and one line of counts (or of the part written)."""
    if "part" in result:
        info = result["part"]
        done = "was already written" if info.get("reused") else "written"
        print(f"part {info['part'] + 1} of {info['parts']} {done} ({info['clips']} clips, "
              f"{_rate(info['clips'], info['seconds'])}); "
              f"{len(result['missing'])} part(s) unfinished; merge with "
              "--config.merge_only=True once all are done")
        return
    for error in result["errors"]:
        print(f"skipped bad input {error['path']}: {error['message']}", file=sys.stderr)
    counts = ", ".join(f"{s}: {v['records']} records" for s, v in result["splits"].items())
    t = result["throughput"]
    print(f"built {config.output} ({counts}; {result['counts']['clips']} clips, "
          f"{_rate(result['counts']['clips'], t['seconds'])}; {len(result['errors'])} bad "
          f"input(s), {len(result['skipped'])} clip(s) too short)")


def _rate(clips: int, seconds: float) -> str:
    return f"{clips / seconds:.2f} clips/s" if seconds else "no clips encoded"
