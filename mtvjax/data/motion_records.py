"""The bytes of one motion record in a shard: versioned msgpack, no pickle.

A record is a msgpack map with a fixed key order: `schema` (the version below), `key` (the
clip's stable name within its dataset), `source_id`, `fps`, `convention`, `video_path`,
`video_frames`, and the arrays `motion` (float32 `[frames, 24, 3]`, camera-space mm),
`frame_indices` (int64 `[frames]`, the video frame of each motion frame) and `confidence`
(float32 `[frames, 24]`). Absent values are nil. An array is a map `{dtype, shape, data}` with
an explicit little-endian dtype and its raw bytes, so encoding is deterministic: equal records
give equal bytes. Decoding checks the schema version, the dtypes and the shapes.

Stored video frames live outside the record, one frame per record of the split's frame shards
(so a training window reads only its own frames): `video_frames` is then
`{kind, first, size}`: the kind of data ("pixels": uint8 `[H, W, 3]` RGB per frame), the
position of the clip's first frame in those shards (one frame per motion frame, in order) and
`[H, W]`.
"""
from __future__ import annotations

import msgpack
import numpy as np

from mtvjax.data.skeleton import NUM_JOINTS

SCHEMA_VERSION = 1
# Kinds of stored video frames. "latents" joins once mtvjax has a video VAE (see data_pipeline.readers.video).
FRAMES_KINDS = ("pixels",)
_ARRAYS = {"motion": "<f4", "frame_indices": "<i8", "confidence": "<f4"}
_SCALARS = ("key", "source_id", "fps", "convention", "video_path", "video_frames")


class RecordSchemaError(ValueError):
    """Bytes that are not a record of this schema version."""


def _pack_array(value, dtype: str):
    if value is None:
        return None
    arr = np.ascontiguousarray(np.asarray(value).astype(dtype, copy=False))
    return {"dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}


def _unpack_array(name: str, packed, dtype: str):
    if packed is None:
        return None
    if not isinstance(packed, dict) or set(packed) != {"dtype", "shape", "data"}:
        raise RecordSchemaError(f"field {name!r} is not an encoded array")
    if packed["dtype"] != dtype:
        raise RecordSchemaError(f"field {name!r} has dtype {packed['dtype']}, expected {dtype}")
    shape = tuple(int(s) for s in packed["shape"])
    arr = np.frombuffer(packed["data"], dtype=np.dtype(dtype))
    if arr.size != int(np.prod(shape)):
        raise RecordSchemaError(f"field {name!r} holds {arr.size} values, shape {list(shape)} needs "
                                f"{int(np.prod(shape))}")
    return arr.reshape(shape)


def _check_fields(rec: dict) -> None:
    motion = rec["motion"]
    if motion is None or motion.ndim != 3 or motion.shape[1:] != (NUM_JOINTS, 3):
        raise RecordSchemaError(f"motion must be [frames, {NUM_JOINTS}, 3], got "
                                f"{None if motion is None else list(motion.shape)}")
    frames = motion.shape[0]
    expected = {"frame_indices": (frames,), "confidence": (frames, NUM_JOINTS)}
    for name, shape in expected.items():
        if rec[name] is not None and rec[name].shape != shape:
            raise RecordSchemaError(f"{name} must have shape {list(shape)}, got {list(rec[name].shape)}")
    video = rec["video_frames"]
    if video is not None:
        if not isinstance(video, dict) or set(video) != {"kind", "first", "size"}:
            raise RecordSchemaError(f"video_frames must be a map of kind, first and size, got {video!r}")
        if video["kind"] not in FRAMES_KINDS:
            raise RecordSchemaError(f"video_frames kind must be one of {FRAMES_KINDS}, got "
                                    f"{video['kind']!r}")
        if int(video["first"]) < 0 or len(video["size"]) != 2 or min(video["size"]) < 1:
            raise RecordSchemaError(f"bad video_frames position or size: {video!r}")


def encode_record(*, key: str, source_id: str, motion, fps: float, convention: str = "smpl",
                  video_path: str | None = None, frame_indices=None, confidence=None,
                  video_frames: dict | None = None) -> bytes:
    """The record's bytes; raises `RecordSchemaError` for fields that do not fit the schema."""
    if video_frames is not None:
        video_frames = {"kind": str(video_frames["kind"]), "first": int(video_frames["first"]),
                        "size": [int(v) for v in video_frames["size"]]}
    rec = {"schema": SCHEMA_VERSION, "key": str(key), "source_id": str(source_id),
           "fps": float(fps), "convention": str(convention),
           "video_path": None if video_path is None else str(video_path),
           "video_frames": video_frames}
    arrays = {"motion": motion, "frame_indices": frame_indices, "confidence": confidence}
    _check_fields({**rec, **{k: None if v is None else np.asarray(v) for k, v in arrays.items()}})
    rec.update({name: _pack_array(arrays[name], dtype) for name, dtype in _ARRAYS.items()})
    return msgpack.packb(rec, use_bin_type=True)


def decode_record(data: bytes) -> dict:
    """The fields of a record as a dict (arrays are read-only views of `data`)."""
    try:
        raw = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise RecordSchemaError(f"not a msgpack record ({e})") from None
    if not isinstance(raw, dict) or "schema" not in raw:
        raise RecordSchemaError("not a motion record (no schema version)")
    if raw["schema"] != SCHEMA_VERSION:
        raise RecordSchemaError(f"record schema version {raw['schema']}, this reader knows "
                                f"{SCHEMA_VERSION}; rebuild the shards with this version")
    missing = sorted((set(_SCALARS) | set(_ARRAYS)) - set(raw))
    if missing:
        raise RecordSchemaError(f"record lacks fields {missing}")
    rec = {name: raw[name] for name in _SCALARS}
    rec.update({name: _unpack_array(name, raw[name], dtype) for name, dtype in _ARRAYS.items()})
    _check_fields(rec)
    return rec
