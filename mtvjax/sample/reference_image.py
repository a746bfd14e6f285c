"""The reference character image: reading it and bringing it to the generation resolution.

* The 7B pipeline resizes the image so it covers the target size (bicubic, aspect kept) and
  centre-crops it (docs/reference/mvdit7b.md §6: 512×512).
* The 17B pipeline picks the resolution bucket of the 512-class table nearest the image's aspect
  ratio and resizes to it with PIL bicubic, without cropping (docs/reference/mvdit17b.md §6.2).

Images are uint8 RGB `[H, W, 3]`; `to_signed` maps them to [−1, 1] as the pipelines do.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from mtvjax.data.buckets import nearest_bucket, scale_buckets


def load_image(path) -> np.ndarray:
    """uint8 RGB `[H, W, 3]`; a missing or unreadable file, or one over PIL's pixel limit
    (`Image.MAX_IMAGE_PIXELS`, a decompression bomb), raises naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: reference image not found")
    try:
        with warnings.catch_warnings():  # a decompression bomb warns first: refuse it as well
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path}: refusing the reference image, too many pixels ({e})") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: cannot read the reference image ({e})") from e


def bucket_for(height: int, width: int, base: int = 512) -> tuple[int, int]:
    """(height, width) of the bucket nearest the aspect ratio, scaled from 512 to `base`."""
    if base <= 0 or base % 32:
        raise ValueError(f"bucket base must be a positive multiple of 32, got {base}")
    return nearest_bucket(height, width, scale_buckets(base))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize to (height, width)."""
    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC), np.uint8)


def resize_centre_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes so the image covers (height, width) with its aspect kept, then crops the centre."""
    h, w = size
    scale = max(h / image.shape[0], w / image.shape[1])
    cover = (max(h, round(image.shape[0] * scale)), max(w, round(image.shape[1] * scale)))
    resized = resize(image, cover)
    top, left = (cover[0] - h) // 2, (cover[1] - w) // 2
    return resized[top:top + h, left:left + w]


def fit_reference(image: np.ndarray, resolution: tuple[int, int], bucket_base: int = 512,
                  multiple: int = 16) -> np.ndarray:
    """The image at the generation resolution: `resolution` = (height, width) → resize and
    centre-crop; (0, 0) → the nearest 17B bucket (scaled to `bucket_base`), plain resize."""
    h, w = (int(v) for v in resolution)
    if (h, w) == (0, 0):
        bucket = bucket_for(image.shape[0], image.shape[1], bucket_base)
        if bucket[0] % multiple or bucket[1] % multiple:
            raise ValueError(f"the {image.shape[0]}x{image.shape[1]} image's bucket at "
                             f"video.bucket_base={bucket_base} is {bucket[0]}x{bucket[1]}, not "
                             f"a multiple of {multiple}: use another base (e.g. 512) or set "
                             "video.resolution")
        return resize(image, bucket)
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ValueError(f"resolution {h}x{w}: height and width must be positive multiples of "
                         f"{multiple} (VAE ×8, patch ×2)")
    return resize_centre_crop(image, (h, w))


def to_signed(frames: np.ndarray) -> np.ndarray:
    """uint8 → float32 in [−1, 1]."""
    return np.asarray(frames, np.float32) / 127.5 - 1.0


def to_uint8(frames) -> np.ndarray:
    """[−1, 1] floats → uint8 (rounded, clipped)."""
    x = (np.asarray(frames, np.float32) + 1.0) * 127.5
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
