"""Prompt embeddings stored beside a dataset (its `text_cache/`): the entry format and the reader.

MV-DiT-17B is conditioned on umT5 embeddings of a prompt (docs/reference/mvdit17b.md §6.6).
Most clips share a handful of prompts, so each distinct prompt is encoded once and stored once,
and records refer to it by key:

    DATASET/text_cache/index.json                     {schema, encoder_id, entries, negative}
    DATASET/text_cache/embeddings-00000-of-00001.array_record

* **Key** (`prompt_key`): sha256 of the encoder id and the prompt. The encoder id
  (`umt5.text_encoder_id`) hashes the converted checkpoint's weight fingerprint, the tokenizer's
  vocabulary, text_len and the compute dtype, so a different encoder never reuses embeddings.
* **Entries**: one ArrayRecord record per key (`encode_entry`, msgpack through
  `mtvjax.data.record_codec`, no pickle): `schema`, `key`, `prompt`, `encoder_id` and the
  embedding's `dtype`, `shape`, `data` — only the prompt's own token rows `[L, dim]` (the DiT
  pads with zeros to 512, `text_lens` = L), float32 or float16. `index.json` maps each key to
  its shard, position and length.
* **Records** refer to their prompt through the manifest: `text_key` in every
  `manifest["index"][split]` entry and a `manifest["text"]` section (encoder id, negative-prompt
  key, counts); the record bytes are unchanged.

`TextCache(folder)` reads a cache (`get(key)`, `padded(keys, 512)`); `DatasetText(dataset)` reads
a built dataset's prompts (`for_record(key)`, `negative()`, `batch(keys)`). The cache is written
by `data_pipeline.text_cache`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mtvjax.data.record_codec import (ARRAY_FIELDS, pack_array, pack_record, unpack_array,
                                      unpack_record)
from mtvjax.data.shard_source import MANIFEST

CACHE_DIR = "text_cache"
INDEX = "index.json"
SCHEMA = "text_embedding/1"
INDEX_SCHEMA = "text_cache/1"
STORE_DTYPES = {"float32": "<f4", "float16": "<f2"}


class TextCacheError(ValueError):
    """A cache folder or entry that is not of this schema, or a prompt that cannot be found."""


def prompt_key(prompt: str, encoder_id: str) -> str:
    return hashlib.sha256(f"{encoder_id}\0{prompt}".encode("utf-8")).hexdigest()


def encode_entry(key: str, prompt: str, encoder_id: str, embedding, dtype: str = "float32"
                 ) -> bytes:
    arr = np.asarray(embedding)
    if arr.ndim != 2:
        raise TextCacheError(f"{prompt!r}: embedding must be [tokens, dim], got {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise TextCacheError(f"{prompt!r}: embedding holds NaN or Inf values")
    return pack_record({"schema": SCHEMA, "key": key, "prompt": prompt, "encoder_id": encoder_id,
                        **pack_array(arr, STORE_DTYPES[dtype])})


def decode_entry(data: bytes) -> dict:
    raw = unpack_record(data, SCHEMA, ("key", "prompt", "encoder_id", *ARRAY_FIELDS),
                        TextCacheError, what="text-cache entry")
    arr = unpack_array(f"entry {raw['key']}", {k: raw[k] for k in ARRAY_FIELDS},
                       STORE_DTYPES.values(), TextCacheError)
    return {"key": raw["key"], "prompt": raw["prompt"], "encoder_id": raw["encoder_id"],
            "embedding": arr.astype(np.float32)}


def pad_rows(arrays: Sequence[np.ndarray], rows: int, limit: str,
             names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 `[B, rows, width]` zero-padded stack of `[L, width]` arrays, int32 `[B]` lengths
    L): the DiT's `text_emb` / `text_lens`. An array longer than `rows` raises, naming `limit`
    (the setting that sets `rows`) and its entry of `names`."""
    out = np.zeros((len(arrays), rows, arrays[0].shape[1]), np.float32)
    lens = np.zeros((len(arrays),), np.int32)
    for i, a in enumerate(arrays):
        if a.shape[0] > rows:
            where = f"{names[i]}: " if names is not None else ""
            raise ValueError(f"{where}{a.shape[0]} rows exceed {limit}={rows}")
        out[i, :a.shape[0]] = a
        lens[i] = a.shape[0]
    return out, lens


def array_record_reader(path: Path):
    """An ArrayRecord reader of one cache shard."""
    from array_record.python.array_record_module import ArrayRecordReader
    return ArrayRecordReader(str(path))


class TextCache:
    """Reads a `text_cache/` folder: `keys()`, `key in cache`, `get(key)` (float32 `[L, dim]`),
    `prompt(key)`, `padded(keys, text_len)`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"{self.folder}: not a text cache (no {INDEX})")
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("schema") != INDEX_SCHEMA:
            raise TextCacheError(f"{path}: schema {index.get('schema')!r}, this reader knows "
                                 f"{INDEX_SCHEMA!r}")
        self.index = index
        self.entries = index["entries"]
        self._readers = {}

    @classmethod
    def open_if_present(cls, folder) -> "TextCache | None":
        return cls(folder) if folder is not None and (Path(folder) / INDEX).is_file() else None

    @property
    def encoder_id(self) -> str | None:
        return self.index.get("encoder_id")

    def keys(self):
        return self.entries.keys()

    def __contains__(self, key) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def raw(self, key: str) -> bytes:
        if key not in self.entries:
            raise KeyError(f"{self.folder}: no embedding with key {key}")
        entry = self.entries[key]
        reader = self._readers.get(entry["shard"])
        if reader is None:
            reader = self._readers[entry["shard"]] = array_record_reader(self.folder / entry["shard"])
        return reader.read([entry["position"]])[0]

    def entry(self, key: str) -> dict:
        found = decode_entry(self.raw(key))
        if found["key"] != key:
            raise TextCacheError(f"{self.folder}: index points {key} at the entry of "
                                 f"{found['key']}")
        return found

    def get(self, key: str) -> np.ndarray:
        return self.entry(key)["embedding"]

    def prompt(self, key: str) -> str:
        return self.entries[key]["prompt"]

    def padded(self, keys: Sequence[str], text_len: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(float32 `[B, text_len, dim]` zero-padded embeddings, int32 `[B]` lengths): the DiT's
        `text_emb` and `text_lens`."""
        if not keys:
            raise ValueError("no keys")
        return pad_rows([self.get(k) for k in keys], text_len, "text_len", keys)

    def close(self):
        for reader in self._readers.values():
            reader.close()
        self._readers = {}


class DatasetText:
    """The prompt embeddings of a built dataset: `for_record(key)`, `negative()`,
    `batch(record_keys, text_len)`."""

    def __init__(self, dataset):
        root = Path(dataset)
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        if "text" not in manifest:
            raise TextCacheError(f"{root}: the dataset has no prompt embeddings (build it with "
                                 "python -m data_pipeline.latents and a family with text)")
        self.section = manifest["text"]
        self.cache = TextCache(root / self.section["folder"])
        self.keys = {e["key"]: e["text_key"] for split in manifest["index"]
                     for e in manifest["index"][split]}

    def for_record(self, key: str) -> np.ndarray:
        return self.cache.get(self.keys[key])

    def prompt(self, key: str) -> str:
        return self.cache.prompt(self.keys[key])

    def negative(self) -> np.ndarray | None:
        key = self.section.get("negative_key")
        return None if key is None else self.cache.get(key)

    def batch(self, record_keys: Sequence[str], text_len: int = 512):
        return self.cache.padded([self.keys[k] for k in record_keys], text_len)
