"""The bytes of one motion record in a shard: versioned msgpack, no pickle.

A record is a msgpack map with a fixed key order: `schema` (the version below), `key` (the
clip's stable name within its dataset), `source_id`, `fps`, `convention`, `video_path`,
`video_frames`, and the arrays `motion` (float32 `[frames, 24, 3]`, camera-space mm),
`frame_indices` (int64 `[frames]`, the video frame of each motion frame) and `confidence`
(float32 `[frames, 24]`). Absent values are nil. An array is a map `{dtype, shape, data}` with
an explicit little-endian dtype and its raw bytes (`mtvjax.data.record_codec`), so encoding is
deterministic: equal records give equal bytes. Decoding checks the schema version, the dtypes
and the shapes.

Stored video frames live outside the record, one frame per record of the split's frame shards
(so a training window reads only its own frames): `video_frames` is then
`{kind, first, size}`: the kind of data ("pixels": uint8 `[H, W, 3]` RGB per frame), the
position of the clip's first frame in those shards (one frame per motion frame, in order) and
`[H, W]`.
"""
from __future__ import annotations

import numpy as np

from mtvjax.data.record_codec import pack_array, pack_record, unpack_array, unpack_record
from mtvjax.data.skeleton import NUM_JOINTS

SCHEMA_VERSION = 1
# Kinds of stored video frames. "latents" joins once mtvjax has a video VAE (see data_pipeline.readers.video).
FRAMES_KINDS = ("pixels",)
_ARRAYS = {"motion": "<f4", "frame_indices": "<i8", "confidence": "<f4"}
_SCALARS = ("key", "source_id", "fps", "convention", "video_path", "video_frames")


class RecordSchemaError(ValueError):
    """Bytes that are not a record of this schema version."""


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
    rec.update({name: pack_array(arrays[name], dtype) for name, dtype in _ARRAYS.items()})
    return pack_record(rec)


def decode_record(data: bytes) -> dict:
    """The fields of a record as a dict (arrays are read-only views of `data`)."""
    raw = unpack_record(data, SCHEMA_VERSION, (*_SCALARS, *_ARRAYS), RecordSchemaError,
                        what="motion record",
                        hint="; rebuild the shards with this version")
    rec = {name: raw[name] for name in _SCALARS}
    rec.update({name: unpack_array(f"field {name!r}", raw[name], (dtype,), RecordSchemaError)
                for name, dtype in _ARRAYS.items()})
    _check_fields(rec)
    return rec
