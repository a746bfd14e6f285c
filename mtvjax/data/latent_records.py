"""MV-DiT training samples: latent records, their shards, the synthetic latent source, batching.

A latent record is one training window: versioned msgpack (no pickle), its own schema beside the
motion records of `mtvjax.data.motion_records` (whose records stay readable unchanged). Keys, in
a fixed order: `schema` ("mvdit_latents/1"), `key`, `source_id`, `fps`, and the arrays

* `latents`        `[F, H, W, C]` video latents (channels last), float32 or float16;
* `ref_latents`    `[Fr, H, W, C]` reference-image latents: Fr = 1 (the image's latent) or F (the
                   image repeated as a video and encoded, as the 7B pipeline does);
* `motion`         `[T, 24, 3]` float32 camera-space mm with T = 4·(F − 1) + 1 (the VAE's causal
                   ×4 time compression; 4DMoT gives the same F latent frames for T = 8k + 1);
* `motion_tokens`  optional `[F·24, width]` precomputed 4DMoT tokens (frame-major);
* `text`           optional `[L, text_dim]` text-encoder features (rows = true length);
* `image`          optional `[N, image_dim]` CLIP-image features (the 17B's `image_emb`);
* `first_joints`   `[24, 3]` float32 mm: the first-frame joints of the record's clip window (the
                   frame of the reference image), the positions of the MV-DiT "dynamic" motion
                   RoPE (`model.motion_pe`). Written by every writer since it was added; a record
                   without the key (written before) reads it as `motion[0]`, and readers that
                   predate it ignore it, so the schema stays "mvdit_latents/1".

Arrays are `{dtype, shape, data}` maps with an explicit little-endian dtype, so equal records give
equal bytes. A built latent dataset (`python -m data_pipeline.latents`) is a folder with
`manifest.json` (`kind: "mvdit_latents"`, per-record index with the shapes), `mean.npy`/`std.npy`
of the motion (the mean is the dataset-mean joints of the 7B's motion RoPE), and `train/`, `val/`
shards. `LatentShardSource` reads one split; `SyntheticLatentSource` makes the same items in
memory from procedural motion; `make_latent_batches` turns either into checkpointable Grain
batches of this process's share of each global batch.

Synthetic latents (`render_latents`, no video needed): the "video latents" are
a deterministic function of the motion: per latent frame, the joints (averaged over the pixel
frames that latent covers) are projected onto the latent grid as Gaussian blobs (all joints, left
side, right side, depth-signed), and the remaining channels carry a per-clip appearance code
painted over the body. The reference latents are the first latent frame, so a model that lowers
the loss has learned motion → video and reference → appearance.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import grain
import msgpack
import numpy as np

from mtvjax.data.skeleton import NUM_JOINTS

SCHEMA = "mvdit_latents/1"
KIND = "mvdit_latents"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
FLOAT_DTYPES = ("<f4", "<f2")
_ARRAYS = ("latents", "ref_latents", "motion", "motion_tokens", "text", "image")
_OPTIONAL = ("motion_tokens", "text", "image")
FIRST_JOINTS = "first_joints"     # added within schema 1: absent in older records → motion[0]


class LatentRecordError(ValueError):
    """Bytes or fields that are not a latent record of this schema."""


def latent_frames_for(frames: int) -> int:
    """Latent frames of a `frames`-frame window under the ×4 causal VAE (49 → 13)."""
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"{frames} frames: the video VAE needs 4k + 1 frames")
    return 1 + (frames - 1) // 4


def _pack(name: str, value, dtype: str | None):
    if value is None:
        return None
    arr = np.asarray(value)
    dtype = dtype or "<f4"
    if dtype not in FLOAT_DTYPES:
        raise LatentRecordError(f"{name}: dtype {dtype} not in {FLOAT_DTYPES}")
    if not np.all(np.isfinite(arr)):
        raise LatentRecordError(f"{name} holds NaN or Inf values")
    arr = np.ascontiguousarray(arr.astype(dtype))
    return {"dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}


def _unpack(name: str, packed):
    if packed is None:
        return None
    if not isinstance(packed, dict) or set(packed) != {"dtype", "shape", "data"}:
        raise LatentRecordError(f"field {name!r} is not an encoded array")
    if packed["dtype"] not in FLOAT_DTYPES:
        raise LatentRecordError(f"field {name!r} has dtype {packed['dtype']}")
    shape = tuple(int(s) for s in packed["shape"])
    arr = np.frombuffer(packed["data"], dtype=np.dtype(packed["dtype"]))
    if arr.size != int(np.prod(shape)):
        raise LatentRecordError(f"field {name!r} holds {arr.size} values, shape {list(shape)}")
    return arr.reshape(shape)


def check_fields(rec: dict) -> None:
    """Shapes agree: latents [F,H,W,C], ref [1|F,H,W,C], motion [4(F−1)+1, 24, 3], tokens
    [F·24, w], text [L, d], image [N, d]."""
    lat, ref, motion = rec["latents"], rec["ref_latents"], rec["motion"]
    if lat is None or lat.ndim != 4:
        raise LatentRecordError("latents must be [F, H, W, C], got "
                                f"{None if lat is None else list(lat.shape)}")
    f = lat.shape[0]
    if ref is None or ref.ndim != 4 or ref.shape[0] not in (1, f) or ref.shape[1:] != lat.shape[1:]:
        raise LatentRecordError(f"ref_latents must be [1 or {f}, "
                                f"{', '.join(map(str, lat.shape[1:]))}], got "
                                f"{None if ref is None else list(ref.shape)}")
    frames = 4 * (f - 1) + 1
    if motion is None or motion.shape != (frames, NUM_JOINTS, 3):
        raise LatentRecordError(f"motion must be [{frames}, {NUM_JOINTS}, 3] for {f} latent "
                                f"frames, got {None if motion is None else list(motion.shape)}")
    tokens = rec.get("motion_tokens")
    if tokens is not None and (tokens.ndim != 2 or tokens.shape[0] != f * NUM_JOINTS):
        raise LatentRecordError(f"motion_tokens must be [{f * NUM_JOINTS}, width], got "
                                f"{list(tokens.shape)}")
    joints = rec.get(FIRST_JOINTS)
    if joints is not None and joints.shape != (NUM_JOINTS, 3):
        raise LatentRecordError(f"first_joints must be [{NUM_JOINTS}, 3], got "
                                f"{list(joints.shape)}")
    for name in ("text", "image"):
        if rec.get(name) is not None and rec[name].ndim != 2:
            raise LatentRecordError(f"{name} must be [rows, width], got {list(rec[name].shape)}")


def encode_latent_record(*, key: str, source_id: str, latents, ref_latents, motion,
                         fps: float = 30.0, motion_tokens=None, text=None, image=None,
                         latent_dtype: str = "<f4", first_joints=None) -> bytes:
    """The record's bytes (latents, reference and features in `latent_dtype`; motion and
    `first_joints` float32). `first_joints` defaults to the window's first frame `motion[0]`."""
    if first_joints is None and motion is not None:
        first_joints = np.asarray(motion)[0]
    arrays = {"latents": latents, "ref_latents": ref_latents, "motion": motion,
              "motion_tokens": motion_tokens, "text": text, "image": image,
              FIRST_JOINTS: first_joints}
    check_fields({k: None if v is None else np.asarray(v) for k, v in arrays.items()})
    rec = {"schema": SCHEMA, "key": str(key), "source_id": str(source_id), "fps": float(fps)}
    for name in _ARRAYS + (FIRST_JOINTS,):
        rec[name] = _pack(name, arrays[name],
                          "<f4" if name in ("motion", FIRST_JOINTS) else latent_dtype)
    return msgpack.packb(rec, use_bin_type=True)


def decode_latent_record(data: bytes) -> dict:
    """Fields as a dict; arrays float32 (decoded from float16 where stored so)."""
    try:
        raw = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise LatentRecordError(f"not a msgpack record ({e})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else None
        raise LatentRecordError(f"record schema {found!r}, this reader knows {SCHEMA!r}"
                                + (" (a motion record: build latent shards with "
                                   "`python -m data_pipeline.latents`)" if found == 1 else ""))
    missing = sorted({"key", "source_id", "fps", *_ARRAYS} - set(raw))
    if missing:
        raise LatentRecordError(f"record lacks fields {missing}")
    rec = {k: raw[k] for k in ("key", "source_id", "fps")}
    for name in _ARRAYS + (FIRST_JOINTS,):
        arr = _unpack(name, raw.get(name))
        rec[name] = None if arr is None else arr.astype(np.float32)
    if rec[FIRST_JOINTS] is None and rec["motion"] is not None:   # written before the field
        rec[FIRST_JOINTS] = rec["motion"][0].copy()
    check_fields(rec)
    return rec


# ----------------------------------------------------------------------------------------------
# Synthetic latents: a deterministic function of the motion
# ----------------------------------------------------------------------------------------------

LEFT = (1, 4, 7, 10, 13, 16, 18, 20, 22)
RIGHT = (2, 5, 8, 11, 14, 17, 19, 21, 23)
MOTION_CHANNELS = 4


def appearance_code(key: str, channels: int) -> np.ndarray:
    """A per-clip code `[channels]` ~ N(0, 1), a pure function of the clip key."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=channels).astype(np.float32)


def latent_joints(motion: np.ndarray, latent_frames: int) -> np.ndarray:
    """Joints per latent frame `[F, 24, 3]`: frame 0 alone, then the mean of each group of 4."""
    first = motion[:1]
    rest = motion[1:1 + 4 * (latent_frames - 1)].reshape(latent_frames - 1, 4, NUM_JOINTS, 3)
    return np.concatenate([first, rest.mean(axis=1)], axis=0)


def render_latents(motion: np.ndarray, latent_frames: int, size: tuple[int, int],
                   channels: int = 16, key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(latents `[F, H, W, C]`, reference `[1, H, W, C]`) float32 for a window of motion (mm).

    Joints are projected by a pinhole camera (x/z, y/z), framed per window so the whole motion
    fits 80 % of the grid, and drawn as Gaussian blobs: channel 0 all joints, 1 the left side,
    2 the right side, 3 the blobs signed by depth relative to the pelvis; channels 4.. hold the
    clip's appearance code times (0.25 + body). Values are O(1).
    """
    if channels <= MOTION_CHANNELS:
        raise ValueError(f"need more than {MOTION_CHANNELS} latent channels, got {channels}")
    height, width = size
    joints = latent_joints(np.asarray(motion, np.float64), latent_frames)      # [F, 24, 3]
    z = np.maximum(joints[..., 2], 1.0)
    uv = joints[..., :2] / z[..., None]                                          # [F, 24, 2]
    lo, hi = uv.reshape(-1, 2).min(0), uv.reshape(-1, 2).max(0)
    scale = 0.8 * min(width, height) / max(float((hi - lo).max()), 1e-6)
    centre = (lo + hi) / 2
    px = (uv - centre) * scale + np.array([width, height]) / 2 - 0.5             # pixel x, y
    sigma = max(0.6, 0.04 * min(width, height))
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    d2 = ((xs[None, None] - px[..., 0, None, None]) ** 2
          + (ys[None, None] - px[..., 1, None, None]) ** 2)                      # [F, 24, H, W]
    blobs = np.exp(-d2 / (2 * sigma ** 2))
    depth = np.tanh((joints[..., 2] - joints[:, :1, 2]) / 150.0)                # [F, 24]
    out = np.zeros((latent_frames, height, width, channels), np.float64)
    body = np.clip(blobs.sum(1), 0, 1.5)
    out[..., 0] = 2 * body - 1
    out[..., 1] = blobs[:, list(LEFT)].sum(1)
    out[..., 2] = blobs[:, list(RIGHT)].sum(1)
    out[..., 3] = (blobs * depth[..., None, None]).sum(1)
    code = appearance_code(key, channels - MOTION_CHANNELS)
    out[..., MOTION_CHANNELS:] = code * (0.25 + body[..., None])
    out = out.astype(np.float32)
    return out, out[:1].copy()


def projected_tokens(motion: np.ndarray, latent_frames: int, width: int) -> np.ndarray:
    """Stand-in motion tokens `[F·24, width]` without a 4DMoT: each joint's position per latent
    frame (centred on the window's mean, in metres) and its sines/cosines, through a fixed random
    projection, plus a fixed per-joint embedding. Deterministic; tells joints and poses apart."""
    joints = latent_joints(np.asarray(motion, np.float64), latent_frames)
    x = (joints - joints.mean(axis=(0, 1))) / 1000.0                              # [F, 24, 3]
    freqs = np.array([1.0, 2.0, 4.0, 8.0])
    angles = (x[..., None] * freqs).reshape(latent_frames, NUM_JOINTS, -1)
    feats = np.concatenate([x, np.sin(angles), np.cos(angles)], axis=-1)          # [F, 24, 27]
    rng = np.random.default_rng(1234)
    proj = rng.normal(size=(feats.shape[-1], width)) / np.sqrt(feats.shape[-1])
    joint_embed = 0.5 * rng.normal(size=(NUM_JOINTS, width))
    tokens = feats @ proj + joint_embed[None]
    return tokens.reshape(latent_frames * NUM_JOINTS, width).astype(np.float32)


def kind_text(kind: str, rows: int, dim: int) -> np.ndarray:
    """A fixed "text embedding" `[rows, dim]` per motion kind (walk, run, ...), N(0, 1)."""
    seed = int.from_bytes(hashlib.sha256(f"text:{kind}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def window_start(key: str, length: int, span: int, seed: int = 0) -> int:
    """A seeded start frame of a `span`-frame window in a clip of `length` frames."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % (length - span + 1)


def synthetic_item(clip, frames: int, size: tuple[int, int], channels: int = 16,
                   text_rows: int = 0, text_dim: int = 0, seed: int = 0,
                   token_width: int = 0) -> dict:
    """The latent-record fields of one window of a motion clip (start seeded by the clip name);
    `token_width` > 0 adds `projected_tokens` as its motion tokens."""
    motion = np.asarray(clip.motion, np.float32)
    if len(motion) < frames:
        raise ValueError(f"{clip.name}: {len(motion)} frames, fewer than the {frames} of a window")
    start = window_start(clip.name, len(motion), frames, seed)
    window = motion[start:start + frames]
    latents, ref = render_latents(window, latent_frames_for(frames), size, channels, clip.name)
    item = {"key": f"{clip.name}@{start}", "source_id": clip.name, "fps": 30.0,
            "latents": latents, "ref_latents": ref, "motion": window, "motion_tokens": None,
            "text": None, "image": None, FIRST_JOINTS: window[0].copy()}
    if text_rows and text_dim:
        item["text"] = kind_text(clip.name.rsplit("-", 1)[-1], text_rows, text_dim)
    if token_width:
        item["motion_tokens"] = projected_tokens(window, latents.shape[0], token_width)
    return item


class SyntheticLatentSource:
    """Random-access synthetic latent items (the embedded default data of MV-DiT training)."""

    def __init__(self, num_windows: int, frames: int, size: tuple[int, int], channels: int = 16,
                 text_rows: int = 0, text_dim: int = 0, seed: int = 0, token_width: int = 0):
        from mtvjax.data.synthetic_motion import SyntheticMotionSource
        latent_frames_for(frames)
        self.motion = SyntheticMotionSource(num_windows, (frames, frames + 30), seed)
        self.frames, self.size, self.channels = frames, tuple(size), channels
        self.text_rows, self.text_dim, self.seed = text_rows, text_dim, seed
        self.token_width = token_width

    def __len__(self) -> int:
        return len(self.motion)

    def __getitem__(self, index: int) -> dict:
        return synthetic_item(self.motion[int(index)], self.frames, self.size, self.channels,
                              self.text_rows, self.text_dim, self.seed, self.token_width)

    def shape_key(self, index: int) -> tuple:
        return (latent_frames_for(self.frames),) + self.size


# ----------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------


def read_latent_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root}: not a built latent dataset (no {MANIFEST}); build one "
                                "with `python -m data_pipeline.latents --config "
                                "configs/data/NAME.py`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("kind") != KIND:
        raise ValueError(f"{root}: a {manifest.get('kind', 'motion')!r} dataset, not MV-DiT "
                         "latents; build latent shards with `python -m data_pipeline.latents`")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('manifest_version')}, this "
                         f"reader knows {MANIFEST_VERSION}; rebuild the dataset")
    return manifest


class LatentShardSource:
    """One split of a built latent dataset (`root` or `root/SPLIT`), items as decoded dicts."""

    def __init__(self, path: str | Path, split: str = "train"):
        path = Path(path)
        if not (path / MANIFEST).is_file() and (path.parent / MANIFEST).is_file():
            path, split = path.parent, path.name
        self.root, self.split = path, split
        self.manifest = read_latent_manifest(path)
        if split not in self.manifest["splits"]:
            raise ValueError(f"{path}: no split {split!r}; it has "
                             f"{sorted(self.manifest['splits'])}")
        info = self.manifest["splits"][split]
        self._entries = self.manifest["index"][split]
        if not self._entries:
            raise ValueError(f"{path}: split {split!r} is empty")
        files = [str(path / s["file"]) for s in info["shards"]]
        self._records = grain.sources.ArrayRecordDataSource(files)
        if len(self._records) != len(self._entries):
            raise ValueError(f"{path}: split {split!r} shards hold {len(self._records)} records, "
                             f"the manifest lists {len(self._entries)}; rebuild the dataset")

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict:
        return decode_latent_record(self._records[int(index)])

    def shape_key(self, index: int) -> tuple:
        return tuple(self._entries[int(index)]["latent_shape"][:3])

    def stats(self) -> dict[str, np.ndarray]:
        return {k: np.load(self.root / f"{k}.npy", allow_pickle=False) for k in ("mean", "std")}


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def _pad_rows(arrays: list, rows: int) -> tuple[np.ndarray, np.ndarray]:
    width = arrays[0].shape[1]
    out = np.zeros((len(arrays), rows, width), np.float32)
    lens = np.zeros(len(arrays), np.int32)
    for i, a in enumerate(arrays):
        if a.shape[0] > rows:
            raise ValueError(f"{a.shape[0]} rows exceed data.text_rows={rows}")
        out[i, :a.shape[0]] = a
        lens[i] = a.shape[0]
    return out, lens


@dataclasses.dataclass
class LatentBatchBuilder:
    """This process's block of one global batch of latent items (a Grain map, deterministic).

    Returns `latents`, `ref_latents`, `motion`, `first_joints` `[b, 24, 3]` (an item's own, else
    its `motion[0]`) and, where every item has them, `motion_tokens`, `text` (+ `text_lens`,
    zero-padded to `text_rows` or the longest) and `image`.
    """

    source: object
    text_rows: int = 0
    process_index: int = 0
    process_count: int = 1

    def __call__(self, indices: np.ndarray) -> dict:
        local = len(indices) // self.process_count
        items = [self.source[int(i)]
                 for i in indices[self.process_index * local:(self.process_index + 1) * local]]
        shapes = {it["latents"].shape for it in items}
        if len(shapes) > 1:
            raise ValueError(f"a batch mixes latent shapes {sorted(shapes)}; batch by shape")
        batch = {name: np.stack([it[name] for it in items]).astype(np.float32)
                 for name in ("latents", "ref_latents", "motion")}
        batch[FIRST_JOINTS] = np.stack([
            it[FIRST_JOINTS] if it.get(FIRST_JOINTS) is not None else it["motion"][0]
            for it in items]).astype(np.float32)
        if all(it["motion_tokens"] is not None for it in items):
            batch["motion_tokens"] = np.stack([it["motion_tokens"] for it in items])
        if all(it["text"] is not None for it in items):
            rows = self.text_rows or max(it["text"].shape[0] for it in items)
            batch["text"], batch["text_lens"] = _pad_rows([it["text"] for it in items], rows)
        if all(it["image"] is not None for it in items):
            batch["image"] = np.stack([it["image"] for it in items])
        batch["index"] = np.asarray(indices[self.process_index * local:
                                            (self.process_index + 1) * local], np.int64)
        return batch


def make_latent_batches(source, batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1, text_rows: int = 0) -> grain.MapDataset:
    """Endless MapDataset of this process's share of each global batch: per-epoch shuffle,
    every batch from one latent shape (items grouped by `source.shape_key`)."""
    from mtvjax.data.loader import _grouped_batches
    if batch_size % process_count:
        raise ValueError(f"global batch {batch_size} does not divide over {process_count} "
                         "processes")
    groups = [source.shape_key(i) for i in range(len(source))]
    if len(set(groups)) == 1:               # (repeated first: a batch may span epochs)
        ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        ds = _grouped_batches(groups, batch_size, seed)
    return ds.map(LatentBatchBuilder(source, text_rows, process_index, process_count))
