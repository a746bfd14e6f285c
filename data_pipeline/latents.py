"""Motion → MV-DiT latent shards: windows, video latents, optional tokens and text, manifest.

    python -m data_pipeline.latents --config configs/data/synthetic_latents.py[:VARIANT] \
        [--config.output=DIR ...]
    python -m data_pipeline.latents --config configs/data/real_videos.py:VARIANT [...]

A config with `latents.renderer="vae"` (configs/data/real_videos.py) encodes real video windows
cut by their pose files with the family's video VAE: `data_pipeline.video_latents`. The rest of
this docstring is about the motion-only ("synthetic") build.

Each training sample is one window of `frames` motion frames (8k + 1, so the ×4 causal video
VAE and 4DMoT both give F = 1 + (frames − 1)/4 latent frames) cut from a motion clip (the
package's procedural motion, motion files, or built motion shards, read by the loader's
`make_source`). For every window it writes a latent record (`mtvjax.data.latent_records`;
read back by `mtvjax.data.latent_shard_source`):

* video latents `[F, H, W, C]` and reference latents `[1, H, W, C]`: `latents.renderer`
  "synthetic" renders them from the motion (`mtvjax.data.synthetic_latents.render_latents`:
  joint blobs + a per-clip appearance code).
* motion tokens (`tokens.kind`): "tokenizer" runs a 4DMoT checkpoint over the windows
  (quantised codebook vectors `[F·24, code_dim]`, as the frozen 4DMoT inside the train step
  would); "projection" stores stand-in tokens (`projected_tokens`); "none" stores none (the
  trainer then needs `motion.tokenizer_checkpoint`).
* text (`text.rows` > 0, synthetic motion only): a fixed embedding per motion kind; image
  (`image.rows` > 0, synthetic motion only): fixed stand-in CLIP features per clip (the 17B's
  image branch needs them).
* first-frame joints `[24, 3]` mm (`first_joints`, the window's first motion frame, i.e. the
  reference image's pose): the positions of MV-DiT's `motion_pe="dynamic"` RoPE.

Windows go to `train`/`val` by a seeded hash of their clip's name (all windows of a clip in one
split). Output folder: `manifest.json` (kind "mvdit_latents", counts, config, per-record index),
`mean.npy`/`std.npy` of the train windows' motion (the mean is the 7B's RoPE mean joints) and
`train/`, `val/` ArrayRecord shards. The build writes a temporary folder and renames it when
complete, replacing only an empty folder or an earlier build that holds nothing else
(`data_pipeline.output_folder`); the same config gives the same bytes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections
import numpy as np

from mtvjax.data.latent_records import encode_latent_record, latent_frames_for
from mtvjax.data.latent_shard_source import KIND, MANIFEST_VERSION
from mtvjax.data.stats import compute_stats
from mtvjax.data.synthetic_latents import (clip_image, kind_text, projected_tokens, render_latents,
                                          window_start)

from data_pipeline import video_latents
from data_pipeline.command import run_build_command
from data_pipeline.motion_tokens import tokenize_windows
from data_pipeline.shard_writer import SPLITS, SplitWriter, clip_split, write_dataset

RENDERERS = ("synthetic", "vae")
TOKEN_KINDS = ("projection", "tokenizer", "none")
LATENT_DTYPES = {"float32": "<f4", "float16": "<f2"}


def motion_source(config):
    """The configured motion source (`mtvjax.data.loader.make_source`) and its load errors."""
    from mtvjax.data.loader import make_source
    m = config.motion
    data = ml_collections.ConfigDict(dict(
        source=m.source, path=m.path, split=m.split, synthetic_sequences=m.synthetic_sequences,
        synthetic_frames=tuple(m.synthetic_frames), shuffle_seed=m.seed))
    return make_source(data, config.frames)


def _check(config) -> None:
    if config.latents.renderer not in RENDERERS:
        raise ValueError(f"latents.renderer must be one of {RENDERERS}, got "
                         f"{config.latents.renderer!r}")
    if config.tokens.kind not in TOKEN_KINDS:
        raise ValueError(f"tokens.kind must be one of {TOKEN_KINDS}, got {config.tokens.kind!r}")
    if config.tokens.kind == "tokenizer" and not config.tokens.tokenizer_checkpoint:
        raise ValueError("tokens.kind='tokenizer' needs tokens.tokenizer_checkpoint")
    if config.latents.dtype not in LATENT_DTYPES:
        raise ValueError(f"latents.dtype must be one of {sorted(LATENT_DTYPES)}")
    if (config.frames - 1) % 8:
        raise ValueError(f"frames must be 8k + 1 (the VAE and 4DMoT latent frames agree), got "
                         f"{config.frames}")
    if not config.output:
        raise ValueError("config.output is empty")


def iter_windows(config, source):
    """(clip name, start, motion window) for every window, in source order."""
    for i in range(len(source)):
        clip = source[i]
        motion = np.asarray(clip.motion, np.float32)
        if len(motion) < config.frames:
            continue
        starts = sorted({window_start(clip.name, len(motion), config.frames, config.seed + w)
                         for w in range(config.windows_per_clip)})
        for start in starts:
            yield clip.name, start, motion[start:start + config.frames]


def _write(config, tmp: Path) -> dict:
    source, errors = motion_source(config)
    tokenizer = None
    if config.tokens.kind == "tokenizer":
        from mtvjax.models.fourdmot.tokenizer import Tokenizer
        tokenizer = Tokenizer(config.tokens.tokenizer_checkpoint)
    size, channels = tuple(config.latents.size), int(config.latents.channels)
    f = latent_frames_for(config.frames)
    dtype = LATENT_DTYPES[config.latents.dtype]
    writers = {s: SplitWriter(tmp / s, s, config.shard_records) for s in SPLITS}
    index = {s: [] for s in SPLITS}
    train_motion = []
    windows = list(iter_windows(config, source))
    if not windows:
        raise ValueError(f"no clip has {config.frames} frames")
    tokens = None
    if tokenizer is not None:
        tokens = np.concatenate([tokenize_windows(tokenizer, np.stack([w[2] for w in chunk]))
                                 for chunk in (windows[i:i + 64]
                                               for i in range(0, len(windows), 64))])
    for n, (name, start, motion) in enumerate(windows):
        key = f"{name}@{start}"
        split = clip_split(name, config.seed, config.val_fraction)
        latents, ref = render_latents(motion, f, size, channels, name)
        window_tokens = None
        if config.tokens.kind == "projection":
            window_tokens = projected_tokens(motion, f, config.tokens.width)
        elif tokens is not None:
            window_tokens = tokens[n]
        text = None
        if config.text.rows and config.motion.source == "synthetic":
            text = kind_text(name.rsplit("-", 1)[-1], config.text.rows, config.text.dim)
        image = None
        if config.image.rows and config.motion.source == "synthetic":
            image = clip_image(name, config.image.rows, config.image.dim)
        writers[split].write(encode_latent_record(
            key=key, source_id=name, latents=latents, ref_latents=ref, motion=motion,
            motion_tokens=window_tokens, text=text, image=image, latent_dtype=dtype,
            first_joints=motion[0]))
        width = None if window_tokens is None else int(window_tokens.shape[1])
        index[split].append({"key": key, "source_id": name, "start": int(start),
                             "latent_shape": list(latents.shape), "token_width": width,
                             "text_rows": 0 if text is None else int(text.shape[0])})
        if split == "train":
            train_motion.append(motion)
    if not train_motion:
        raise ValueError("no window went to the train split")
    stats = compute_stats(train_motion)
    for k, v in stats.items():
        np.save(tmp / f"{k}.npy", v)
    splits = {s: {"records": len(index[s]), "shards": writers[s].close(tmp)} for s in SPLITS}
    settings = {k: v for k, v in json.loads(config.to_json()).items() if k != "output"}
    return {"manifest_version": MANIFEST_VERSION, "name": config.name,
            "config": settings, "errors": [str(e) for e in errors], "splits": splits,
            "index": index, "statistics": {"mean_path": "mean.npy", "std_path": "std.npy",
                                           "rope_mean_joints": stats["mean"].tolist()}}


def build(config) -> dict:
    """Builds the latent dataset `config` describes into `config.output`; returns its manifest
    (renderer "vae": see `data_pipeline.video_latents.build`)."""
    if config.latents.renderer == "vae":
        return video_latents.build(config)
    _check(config)
    return write_dataset(config.output, KIND, lambda folder: _write(config, folder))


def report(config, manifest: dict) -> None:
    """Prints the skipped motion (stderr) and one line of counts."""
    if config.latents.renderer == "vae":
        video_latents.report(config, manifest)
        return
    for error in manifest["errors"]:
        print(f"skipped: {error}", file=sys.stderr)
    counts = ", ".join(f"{s}: {v['records']} windows" for s, v in manifest["splits"].items())
    print(f"built {config.output} ({counts})")


def main() -> None:
    run_build_command(build, report, "python -m data_pipeline.latents", __doc__,
                      "e.g. configs/data/synthetic_latents.py:tiny")


if __name__ == "__main__":
    main()
