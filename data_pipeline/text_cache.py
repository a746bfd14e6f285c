"""Writing a dataset's prompt-embedding cache: each distinct prompt encoded once.

What it does: given a dataset's manifest and per-clip prompts, `text_step` encodes every
**distinct** prompt (and the negative prompt) once with umT5 (or looks it up in embeddings made
elsewhere, `PrecomputedEncoder({prompt: [L, dim]}, encoder_id)`), writes them to
`DATASET/text_cache/` (the format and its reader: `mtvjax.data.text_embeddings`), adds
`text_key` to every `manifest["index"][split]` entry and a `manifest["text"]` section (encoder
id, negative-prompt key, counts). Entries are written in key order, so the same prompts give
the same bytes; `previous=` (an earlier build's `text_cache/`) supplies entries it already
holds, so a rebuild encodes only new prompts, and the encoder is built lazily (a build whose
prompts are all cached never loads it).

Prompts come from `prompts` (a JSON object `{key: prompt}`, JSON lines
`{"key": ..., "prompt": ...}` or `key<TAB>prompt` lines; a clip is looked up by its record key,
then its clip key, then its source_id, then its video path) and otherwise `default_prompt`.
`make_encoder` gives umT5 from a converted checkpoint, or the embeddings of an `.npz`
`{prompt: [L, dim]}` (`embeddings`); `cached_encoder` looks prompts up in caches already written.

Used by the real-video latent build (`data_pipeline.video_latents`): each part encodes its
clips' distinct captions once into its own cache (`encode_prompts`), its records carry the
embeddings as `text`, and the merge writes the dataset's cache from the parts' (`text_step`
with `cached_encoder`). Trainers read the records' `text`; `DatasetText` reads the cache (the
negative prompt's embedding is there).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from mtvjax.data.text_embeddings import (CACHE_DIR, INDEX, INDEX_SCHEMA, TextCache,
                                         TextCacheError, array_record_reader, decode_entry,
                                         encode_entry, prompt_key)

from data_pipeline.shard_writer import ARRAY_RECORD_OPTIONS

DEFAULT_PROMPT = "The character is dancing."
NEGATIVE_PROMPT = "bad hands, extra limbs, fused fingers, blurry, low quality"


def default_config():
    """The `text` section of a data config (`config.text = text_cache.default_config()`)."""
    import ml_collections
    return ml_collections.ConfigDict(dict(
        enabled=False,               # encode prompts into DATASET/text_cache
        encoder="",                  # umT5 checkpoint written by convert_umt5
        tokenizer="",                # umT5 tokenizer folder (Wan's google/umt5-xxl)
        dtype="bfloat16",            # encoder compute dtype (the released pipeline's bf16)
        batch_size=4,                # prompts per encoder call
        prompts="",                  # JSON / JSONL / TSV file of per-clip prompts
        embeddings="",               # .npz {prompt: [L, dim]} made elsewhere, instead of umT5
        default_prompt=DEFAULT_PROMPT,   # for clips without one ("" = such clips are an error)
        negative_prompt=NEGATIVE_PROMPT,
        store_dtype="float32",       # float32 | float16
        shard_records=256,           # cache entries per ArrayRecord shard
    ))


class PrecomputedEncoder:
    """An "encoder" that looks prompts up in `{prompt: [L, dim] array}` (embeddings made
    elsewhere), under the given `encoder_id`; a prompt it lacks is an error."""

    def __init__(self, embeddings: Mapping[str, np.ndarray], encoder_id: str):
        self.embeddings = dict(embeddings)
        self.encoder_id = encoder_id

    def __call__(self, prompts: Sequence[str]) -> list[np.ndarray]:
        absent = [p for p in prompts if p not in self.embeddings]
        if absent:
            raise TextCacheError(f"no precomputed embedding for {len(absent)} prompt(s): "
                                 + ", ".join(repr(p) for p in absent[:5]))
        return [np.asarray(self.embeddings[p], np.float32) for p in prompts]


def _writer(path: Path):
    from array_record.python.array_record_module import ArrayRecordWriter
    return ArrayRecordWriter(str(path), ARRAY_RECORD_OPTIONS)


def write_cache(folder, items: Iterable[tuple[str, str, Callable[[], bytes]]], encoder_id: str,
                shard_records: int = 256, extra_index: Mapping | None = None) -> dict:
    """Writes `folder` (must not exist) from `(key, prompt, entry bytes thunk)` items, in key
    order; returns the index."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    items = sorted(items, key=lambda item: item[0])
    n_shards = max(1, -(-len(items) // shard_records))
    entries = {}
    for s in range(n_shards):
        name = f"embeddings-{s:05d}-of-{n_shards:05d}.array_record"
        writer = _writer(folder / name)
        for position, (key, prompt, thunk) in enumerate(
                items[s * shard_records:(s + 1) * shard_records]):
            data = thunk()
            entry = decode_entry(data)
            writer.write(data)
            entries[key] = {"shard": name, "position": position, "prompt": prompt,
                            "length": int(entry["embedding"].shape[0]),
                            "dim": int(entry["embedding"].shape[1])}
        writer.close()
    index = {"schema": INDEX_SCHEMA, "encoder_id": encoder_id, "entries": entries,
             **dict(extra_index or {})}
    (folder / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False)
                                + "\n", encoding="utf-8")
    return index


def encode_prompts(prompts: Iterable[str], folder, encoder, *, encoder_id: str | None = None,
                   previous=None, store_dtype: str = "float32", shard_records: int = 256,
                   extra_index: Mapping | None = None) -> tuple[dict, dict]:
    """Writes the cache `folder` holding every distinct prompt of `prompts`, each encoded once:
    taken from the cache `previous` (a folder, or `folder` itself when it exists) when it holds
    the prompt's key, else encoded by `encoder(list_of_prompts) -> list of [L, dim]`.

    `encoder_id` defaults to `encoder.encoder_id`. Returns ({prompt: key}, stats)."""
    distinct = sorted(set(prompts))
    if encoder_id is None:
        encoder_id = getattr(encoder, "encoder_id", None)
        if encoder_id is None:
            raise ValueError("encoder_id is needed (the encoder has no encoder_id attribute)")
    keys = {p: prompt_key(p, encoder_id) for p in distinct}
    folder = Path(folder)
    previous_folder = Path(previous) if previous is not None else (
        folder if (folder / INDEX).is_file() else None)
    old = TextCache.open_if_present(previous_folder)
    reused = {p for p in distinct if old is not None and keys[p] in old}
    missing = [p for p in distinct if p not in reused]
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pending = tmp / "pending.array_record"
    new_reader = None
    try:
        if missing:
            writer = _writer(pending)
            for start in range(0, len(missing), 64):          # bounded memory
                chunk = missing[start:start + 64]
                embeddings = encoder(chunk)
                if len(embeddings) != len(chunk):
                    raise TextCacheError(f"the encoder returned {len(embeddings)} embeddings "
                                         f"for {len(chunk)} prompts")
                for p, emb in zip(chunk, embeddings):
                    writer.write(encode_entry(keys[p], p, encoder_id, emb, store_dtype))
            writer.close()
        new_reader = array_record_reader(pending) if missing else None
        position = {p: i for i, p in enumerate(missing)}
        items = []
        for p in distinct:
            if p in position:
                items.append((keys[p], p, lambda i=position[p]: new_reader.read([i])[0]))
            else:
                items.append((keys[p], p, _reencoded(old, keys[p], store_dtype)))
        out = tmp / "cache"
        index = write_cache(out, items, encoder_id, shard_records, extra_index)
        if old is not None:
            old.close()
        if folder.exists():
            shutil.rmtree(folder)
        out.rename(folder)
    finally:
        if new_reader is not None:
            new_reader.close()
        if old is not None:
            old.close()
        shutil.rmtree(tmp, ignore_errors=True)
    stats = {"distinct_prompts": len(distinct), "encoded": len(missing), "reused": len(reused),
             "entries": len(index["entries"])}
    return keys, stats


def _reencoded(cache: TextCache, key: str, store_dtype: str) -> Callable[[], bytes]:
    """The cached entry of `key` in `store_dtype` (float16 → float32 → float16 is exact, so an
    entry already stored in `store_dtype` comes back byte for byte)."""
    def read():
        entry = cache.entry(key)
        return encode_entry(key, entry["prompt"], entry["encoder_id"], entry["embedding"],
                            store_dtype)
    return read


# ----------------------------------------------------------------------------------------------
# Prompts of a dataset
# ----------------------------------------------------------------------------------------------


def load_prompts(path) -> dict[str, str]:
    """`{key: prompt}` from a JSON object, JSON lines (`{"key", "prompt"}`) or TSV file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("{") and not path.suffix == ".jsonl":
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and set(data) != {"key", "prompt"}:
            bad = [k for k, v in data.items() if not isinstance(v, str)]
            if bad:
                raise TextCacheError(f"{path}: prompts must be strings (keys {bad[:5]})")
            return dict(data)
    prompts = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
                key, prompt = row["key"], row["prompt"]
            except (ValueError, KeyError, TypeError) as e:
                raise TextCacheError(f"{path}:{n}: not a {{\"key\", \"prompt\"}} line ({e})")
        elif "\t" in line:
            key, prompt = line.split("\t", 1)
        else:
            raise TextCacheError(f"{path}:{n}: expected JSON or KEY<TAB>PROMPT")
        if key in prompts and prompts[key] != prompt:
            raise TextCacheError(f"{path}:{n}: key {key!r} has two prompts")
        prompts[str(key)] = str(prompt)
    return prompts


def resolve_prompts(entries: Iterable[Mapping], prompts: Mapping[str, str] | None,
                    default: str | None) -> tuple[dict[str, str], list[str]]:
    """(`{record key: prompt}`, keys that got `default`) for manifest index entries: the prompt
    listed under the record's key, else its clip key, else its source_id, else its video path,
    else `default` (an error if empty)."""
    prompts = prompts or {}
    out, missing, defaulted = {}, [], []
    for e in entries:
        for name in ("key", "clip", "source_id", "video_path"):
            value = e.get(name)
            if value is not None and value in prompts:
                out[e["key"]] = prompts[value]
                break
        else:
            if default:
                out[e["key"]] = default
                defaulted.append(e["key"])
            else:
                missing.append(e["key"])
    if missing:
        raise TextCacheError(f"no prompt for {len(missing)} clip(s) and no default_prompt: "
                             + ", ".join(missing[:10]))
    return out, defaulted


def make_encoder(config):
    """The prompt encoder of a `text` section: the `.npz` of `embeddings` (`{prompt: [L, dim]}`,
    encoder id from its bytes) or umT5 from `encoder` / `tokenizer` (weights read on first use)."""
    if config.get("embeddings"):
        path = Path(config.embeddings)
        try:
            with np.load(path, allow_pickle=False) as data:
                embeddings = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError) as e:
            raise TextCacheError(f"{path}: not an .npz of prompt embeddings ({e})") from None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return PrecomputedEncoder(embeddings, f"precomputed:{digest}")
    from mtvjax.models.encoders.load import text_encoder_from_checkpoint
    if not config.encoder or not config.tokenizer:
        raise ValueError("a umT5 checkpoint (convert_umt5) and the umT5 tokenizer folder are "
                         "needed to encode prompts, or an .npz of precomputed embeddings")
    return text_encoder_from_checkpoint(config.encoder, config.tokenizer, dtype=config.dtype,
                                        batch_size=config.batch_size)


def cached_encoder(folders) -> PrecomputedEncoder:
    """An encoder answering from the entries of the text caches `folders` (all written by one
    encoder), so a merged dataset's cache needs no encoding."""
    embeddings, ids = {}, set()
    for folder in folders:
        cache = TextCache(folder)
        ids.add(cache.encoder_id)
        for key in cache.keys():
            entry = cache.entry(key)
            embeddings[entry["prompt"]] = entry["embedding"]
        cache.close()
    if len(ids) != 1:
        raise TextCacheError(f"text caches of {len(ids)} encoders ({sorted(map(str, ids))}); "
                             "build all parts with one text encoder")
    return PrecomputedEncoder(embeddings, ids.pop())


def text_step(config, root, manifest: dict, encoder=None, previous=None) -> dict | None:
    """The build step. `config`: the `text` section (`default_config()`); `root`: the dataset
    folder being written (the build's temporary folder); `manifest`: its manifest dict, not yet
    saved. Writes `root/text_cache/`, adds `text_key` to every index entry and returns (and
    stores) `manifest["text"]`. `encoder`: an encoder with `encoder_id` (default: built from
    `config.encoder` / `config.tokenizer`, its weights read only if a prompt is not cached);
    `previous`: an earlier `text_cache/` to reuse entries from. Returns None when disabled."""
    if not config.get("enabled", False):
        return None
    if encoder is None:
        encoder = make_encoder(config)
    entries = [e for split in sorted(manifest["index"]) for e in manifest["index"][split]]
    prompts = load_prompts(config.prompts) if config.get("prompts") else {}
    per_record, defaulted = resolve_prompts(entries, prompts, config.get("default_prompt"))
    negative = config.get("negative_prompt") or ""
    wanted = list(per_record.values()) + ([negative] if negative else [])
    keys, stats = encode_prompts(wanted, Path(root) / CACHE_DIR, encoder,
                                 encoder_id=encoder.encoder_id, previous=previous,
                                 store_dtype=config.get("store_dtype", "float32"),
                                 shard_records=config.get("shard_records", 256),
                                 extra_index={"negative": keys_of(negative, encoder.encoder_id)})
    for split in manifest["index"]:
        for e in manifest["index"][split]:
            e["text_key"] = keys[per_record[e["key"]]]
    section = {"folder": CACHE_DIR, "encoder_id": encoder.encoder_id,
               "negative_prompt": negative or None,
               "negative_key": keys[negative] if negative else None,
               "clips": len(entries), "clips_with_default_prompt": len(defaulted), **stats}
    manifest["text"] = section
    return section


def keys_of(prompt: str, encoder_id: str) -> str | None:
    return prompt_key(prompt, encoder_id) if prompt else None
