"""Image preprocessing for the CLIP vision tower, exactly as the Wan-2.1-I2V / MV-DiT-17B pipeline
does it (docs/reference/mvdit17b.md §6.6), plus the transformers `CLIPImageProcessor` recipe.

**Pipeline recipe** (`clip_preprocess`, the default): the reference image in [−1, 1] (already
resized to its resolution bucket) is

1. re-quantised to uint8 by truncation of (x·0.5 + 0.5)·255 and mapped back to [−1, 1] as
   (u/255 − 0.5)/0.5 (`quantize=True`; uint8 input starts here);
2. cast to bfloat16 (`bfloat16=True`, as the released pipeline does; every later step then
   rounds to bfloat16 like torch's bf16 ops);
3. resized to 224×224 with torch's bicubic (`F.interpolate(mode="bicubic",
   align_corners=False)`, no antialias: Keys cubic with a = −0.75, source index (i + ½)·in/out − ½,
   edge pixels repeated; computed as two float32 matrix products, within 2e-4 of torch's CPU
   kernel on unit-scale data), the aspect ratio **not** kept and nothing cropped;
4. mapped to [0, 1] by ×0.5 + 0.5 and normalised with the OpenAI CLIP mean / std.

**transformers recipe** (`clip_processor_preprocess`): uint8 RGB → shortest side to 224 with PIL
bicubic → centre crop 224×224 → /255 → mean / std (what `CLIPImageProcessor` does for
`laion/CLIP-ViT-H-14` style checkpoints). Not what the Wan pipeline uses.

Images are channels last, `[B, H, W, 3]` (or one `[H, W, 3]`); outputs are float32 numpy
`[B, 224, 224, 3]`, the input of `clip_vision.CLIPVisionTower`.
"""
from __future__ import annotations

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CUBIC_A = -0.75   # torch's bicubic coefficient (PIL and jax.image use other kernels)


def _batched(images) -> tuple[np.ndarray, bool]:
    arr = np.asarray(images)
    if arr.ndim == 3:
        return arr[None], True
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3] or [H, W, 3], got {list(arr.shape)}")
    return arr, False


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even) and back to float32."""
    import ml_dtypes
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def quantize_to_uint8(images) -> np.ndarray:
    """[−1, 1] floats → uint8 by truncation of (x·0.5 + 0.5)·255 (values clipped to [0, 255])."""
    x = np.asarray(images, np.float32)
    return np.clip((x * np.float32(0.5) + np.float32(0.5)) * np.float32(255.0), 0, 255).astype(
        np.uint8)


def uint8_to_signed(images) -> np.ndarray:
    """uint8 → float32 in [−1, 1] as `to_tensor(...).sub_(0.5).div_(0.5)` computes it."""
    v = np.asarray(images, np.uint8).astype(np.float32) / np.float32(255.0)
    return (v - np.float32(0.5)) / np.float32(0.5)


def cubic_weights(in_size: int, out_size: int, a: float = CUBIC_A) -> np.ndarray:
    """float32 `[out_size, in_size]` matrix of torch's bicubic resize along one axis
    (align_corners=False, no antialias, indices clamped at the borders)."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
    base = np.floor(src)
    t = (src - base).astype(np.float64)

    def near(x):   # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):    # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    coeffs = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    weights = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    for k in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
        np.add.at(weights, (rows, idx), coeffs[:, k])
    return weights.astype(np.float32)


def bicubic_resize(images, size: tuple[int, int]) -> np.ndarray:
    """torch `F.interpolate(mode="bicubic", align_corners=False)` on `[B, H, W, C]` float32."""
    x = np.asarray(images, np.float32)
    single = x.ndim == 3
    x = x[None] if single else x
    wy = cubic_weights(x.shape[1], size[0])
    wx = cubic_weights(x.shape[2], size[1])
    out = np.einsum("oh,bhwc->bowc", wy, x, dtype=np.float32, optimize=True)
    out = np.einsum("pw,bowc->bopc", wx, out, dtype=np.float32, optimize=True)
    return out[0] if single else out


def clip_preprocess(images, size: int = 224, *, quantize: bool = True, bfloat16: bool = True,
                    mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """The Wan pipeline's CLIP input (see the module docstring) from `[B, H, W, 3]` images:
    uint8 RGB, or floats in [−1, 1] (quantised through uint8 first unless `quantize=False`).
    `bfloat16=False` keeps every step in float32."""
    x, single = _batched(images)
    if x.dtype == np.uint8:
        x = uint8_to_signed(x)
    else:
        x = x.astype(np.float32)
        if quantize:
            x = uint8_to_signed(quantize_to_uint8(x))
    rnd = _bf16 if bfloat16 else (lambda v: v)
    x = rnd(x)
    x = rnd(bicubic_resize(x, (size, size)))
    x = rnd(rnd(x * np.float32(0.5)) + np.float32(0.5))
    mean = rnd(np.asarray(mean, np.float32))
    std = rnd(np.asarray(std, np.float32))
    x = rnd(rnd(x - mean) / std)
    return x[0] if single else x


def clip_processor_preprocess(images, size: int = 224, crop: int = 224, *, mean=CLIP_MEAN,
                              std=CLIP_STD) -> np.ndarray:
    """transformers `CLIPImageProcessor` recipe on uint8 RGB `[B, H, W, 3]`: shortest side to
    `size` (PIL bicubic, the long side int(size·long/short)), centre crop `crop`×`crop`, /255,
    mean / std."""
    from PIL import Image
    x, single = _batched(images)
    if x.dtype != np.uint8:
        raise ValueError(f"the CLIPImageProcessor recipe takes uint8 RGB images, got {x.dtype}")
    out = []
    for img in x:
        h, w = img.shape[:2]
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = size, int(size * long / short)
        nh, nw = (new_short, new_long) if h <= w else (new_long, new_short)
        resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))
        top, left = int((nh - crop) / 2.0), int((nw - crop) / 2.0)
        if top < 0 or left < 0:
            raise ValueError(f"crop {crop} larger than the resized image {nh}×{nw}")
        patch = resized[top:top + crop, left:left + crop].astype(np.float32) * np.float32(1 / 255)
        out.append((patch - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    out = np.stack(out).astype(np.float32)
    return out[0] if single else out
