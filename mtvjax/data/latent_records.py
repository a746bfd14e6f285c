"""The bytes of one MV-DiT training sample (a latent record): versioned msgpack, no pickle.

A latent record is one training window, with its own schema beside the motion records of
`mtvjax.data.motion_records` (whose records stay readable unchanged). Keys, in a fixed order:
`schema` ("mvdit_latents/1"), `key`, `source_id`, `fps`, and the arrays

* `latents`        `[F, H, W, C]` video latents (channels last), float32 or float16;
* `latents_logvar` optional `[F, H, W, C]` log-variance of the VAE posterior whose mean is
                   `latents` (same space and dtype: the trainer draws x0 = latents +
                   exp(logvar/2)·ε per step). Added within schema 1 like `first_joints`: a record
                   without the key reads it as absent (None), older readers ignore it;
* `ref_latents`    `[Fr, H, W, C]` reference-image latents: Fr = 1 (the image's latent; the
                   synthetic records) or F (7B: the image repeated as a video and encoded, as its
                   pipeline does; 17B: the latent part of `y`, the encoded video of the image
                   then zero frames);
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

Arrays are `{dtype, shape, data}` maps with an explicit little-endian dtype
(`mtvjax.data.record_codec`), so equal records give equal bytes. Shards of these records are
read by `mtvjax.data.latent_shard_source`, made in memory by `mtvjax.data.synthetic_latents`
and batched by `mtvjax.data.latent_batches`.
"""
from __future__ import annotations

import numpy as np

from mtvjax.data.record_codec import pack_array, pack_record, unpack_array, unpack_record
from mtvjax.data.skeleton import NUM_JOINTS

SCHEMA = "mvdit_latents/1"
FLOAT_DTYPES = ("<f4", "<f2")
_ARRAYS = ("latents", "ref_latents", "motion", "motion_tokens", "text", "image")
FIRST_JOINTS = "first_joints"     # added within schema 1: absent in older records → motion[0]
LATENTS_LOGVAR = "latents_logvar"  # added within schema 1: absent in older records → None
_ADDED = (FIRST_JOINTS, LATENTS_LOGVAR)


class LatentRecordError(ValueError):
    """Bytes or fields that are not a latent record of this schema."""


def latent_frames_for(frames: int) -> int:
    """Latent frames of a `frames`-frame window under the ×4 causal VAE (49 → 13)."""
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"{frames} frames: the video VAE needs 4k + 1 frames")
    return 1 + (frames - 1) // 4


def _pack(name: str, value, dtype: str):
    if value is None:
        return None
    if dtype not in FLOAT_DTYPES:
        raise LatentRecordError(f"{name}: dtype {dtype} not in {FLOAT_DTYPES}")
    if not np.all(np.isfinite(np.asarray(value))):
        raise LatentRecordError(f"{name} holds NaN or Inf values")
    return pack_array(value, dtype)


def check_fields(rec: dict) -> None:
    """Shapes agree: latents [F,H,W,C] (and latents_logvar), ref [1|F,H,W,C], motion
    [4(F−1)+1, 24, 3], tokens [F·24, w], text [L, d], image [N, d]."""
    lat, ref, motion = rec["latents"], rec["ref_latents"], rec["motion"]
    if lat is None or lat.ndim != 4:
        raise LatentRecordError("latents must be [F, H, W, C], got "
                                f"{None if lat is None else list(lat.shape)}")
    f = lat.shape[0]
    logvar = rec.get(LATENTS_LOGVAR)
    if logvar is not None and logvar.shape != lat.shape:
        raise LatentRecordError(f"latents_logvar must be {list(lat.shape)} like latents, got "
                                f"{list(logvar.shape)}")
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
                         latent_dtype: str = "<f4", first_joints=None,
                         latents_logvar=None) -> bytes:
    """The record's bytes (latents, their optional posterior log-variance, reference and
    features in `latent_dtype`; motion and `first_joints` float32). `first_joints` defaults to
    the window's first frame `motion[0]`."""
    if first_joints is None and motion is not None:
        first_joints = np.asarray(motion)[0]
    arrays = {"latents": latents, "ref_latents": ref_latents, "motion": motion,
              "motion_tokens": motion_tokens, "text": text, "image": image,
              FIRST_JOINTS: first_joints, LATENTS_LOGVAR: latents_logvar}
    check_fields({k: None if v is None else np.asarray(v) for k, v in arrays.items()})
    rec = {"schema": SCHEMA, "key": str(key), "source_id": str(source_id), "fps": float(fps)}
    for name in _ARRAYS + _ADDED:
        rec[name] = _pack(name, arrays[name],
                          "<f4" if name in ("motion", FIRST_JOINTS) else latent_dtype)
    return pack_record(rec)


def decode_latent_record(data: bytes) -> dict:
    """Fields as a dict; arrays float32 (decoded from float16 where stored so)."""
    raw = unpack_record(data, SCHEMA, ("key", "source_id", "fps", *_ARRAYS), LatentRecordError,
                        what="latent record",
                        hint="; build latent shards with `python -m data_pipeline.latents`")
    rec = {k: raw[k] for k in ("key", "source_id", "fps")}
    for name in _ARRAYS + _ADDED:
        arr = unpack_array(f"field {name!r}", raw.get(name), FLOAT_DTYPES, LatentRecordError)
        rec[name] = None if arr is None else arr.astype(np.float32)
    if rec[FIRST_JOINTS] is None and rec["motion"] is not None:   # written before the field
        rec[FIRST_JOINTS] = rec["motion"][0].copy()
    check_fields(rec)
    return rec
