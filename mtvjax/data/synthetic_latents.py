"""Synthetic MV-DiT training samples: latents rendered from procedural motion, no video needed.

The "video latents" are a deterministic function of the motion: per latent frame, the joints
(averaged over the pixel frames that latent covers) are projected onto the latent grid as
Gaussian blobs (all joints, left side, right side, depth-signed), and the remaining channels
carry a per-clip appearance code painted over the body. The reference latents are the first
latent frame, so a model that lowers the loss has learned motion → video and reference →
appearance. Text (per motion kind) and CLIP-image features (per clip) are fixed seeded stand-ins.
`SyntheticLatentSource` gives the fields of a latent record
(`mtvjax.data.latent_records`) in memory, the embedded default data of MV-DiT training;
`data_pipeline.latents` writes the same items as shards.
"""
from __future__ import annotations

import hashlib

import numpy as np

from mtvjax.data.latent_records import FIRST_JOINTS, latent_frames_for
from mtvjax.data.skeleton import NUM_JOINTS
from mtvjax.data.synthetic_motion import SyntheticMotionSource

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


def _seeded_features(label: str, rows: int, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def kind_text(kind: str, rows: int, dim: int) -> np.ndarray:
    """A fixed "text embedding" `[rows, dim]` per motion kind (walk, run, ...), N(0, 1)."""
    return _seeded_features(f"text:{kind}", rows, dim)


def clip_image(name: str, rows: int, dim: int) -> np.ndarray:
    """Fixed stand-in CLIP-image features `[rows, dim]` per clip (its reference image), N(0, 1)."""
    return _seeded_features(f"image:{name}", rows, dim)


def window_start(key: str, length: int, span: int, seed: int = 0) -> int:
    """A seeded start frame of a `span`-frame window in a clip of `length` frames."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % (length - span + 1)


def synthetic_item(clip, frames: int, size: tuple[int, int], channels: int = 16,
                   text_rows: int = 0, text_dim: int = 0, seed: int = 0,
                   token_width: int = 0, image_rows: int = 0, image_dim: int = 0) -> dict:
    """The latent-record fields of one window of a motion clip (start seeded by the clip name);
    `token_width` > 0 adds `projected_tokens` as its motion tokens, `image_rows`/`image_dim` > 0
    the clip's `clip_image` features."""
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
    if image_rows and image_dim:
        item["image"] = clip_image(clip.name, image_rows, image_dim)
    return item


class SyntheticLatentSource:
    """Random-access synthetic latent items (the embedded default data of MV-DiT training)."""

    def __init__(self, num_windows: int, frames: int, size: tuple[int, int], channels: int = 16,
                 text_rows: int = 0, text_dim: int = 0, seed: int = 0, token_width: int = 0,
                 image_rows: int = 0, image_dim: int = 0):
        latent_frames_for(frames)
        self.motion = SyntheticMotionSource(num_windows, (frames, frames + 30), seed)
        self.frames, self.size, self.channels = frames, tuple(size), channels
        self.text_rows, self.text_dim, self.seed = text_rows, text_dim, seed
        self.token_width, self.image_rows, self.image_dim = token_width, image_rows, image_dim

    def __len__(self) -> int:
        return len(self.motion)

    def __getitem__(self, index: int) -> dict:
        return synthetic_item(self.motion[int(index)], self.frames, self.size, self.channels,
                              self.text_rows, self.text_dim, self.seed, self.token_width,
                              self.image_rows, self.image_dim)

    def shape_key(self, index: int) -> tuple:
        return (latent_frames_for(self.frames),) + self.size
