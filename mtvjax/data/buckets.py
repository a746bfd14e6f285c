"""MV-DiT's resolution buckets: the (height, width) sizes it trains and samples at.

The 17B pipeline's 512-class table holds 40 sizes from 256 x 1024 to 1024 x 256, every side a
multiple of 32, each under its rounded height/width ratio. A video or image goes to the bucket
whose ratio is nearest its own (the first on ties). The writer side uses the table to crop
training frames (`data_pipeline.readers.video`), sampling to size the reference image
(`mtvjax.sample.reference_image`); `scale_buckets` gives the same ratios for a smaller class.
"""
from __future__ import annotations

# (height / width, height, width) of the 17B's 512-class buckets.
BUCKETS_512 = (
    (0.25, 256, 1024), (0.26, 256, 992), (0.27, 256, 960), (0.28, 256, 928), (0.32, 288, 896),
    (0.33, 288, 864), (0.35, 288, 832), (0.4, 320, 800), (0.42, 320, 768), (0.48, 352, 736),
    (0.5, 352, 704), (0.52, 352, 672), (0.57, 384, 672), (0.6, 384, 640), (0.68, 416, 608),
    (0.72, 416, 576), (0.78, 448, 576), (0.82, 448, 544), (0.88, 480, 544), (0.94, 480, 512),
    (1.0, 512, 512), (1.07, 512, 480), (1.13, 544, 480), (1.21, 544, 448), (1.29, 576, 448),
    (1.38, 576, 416), (1.46, 608, 416), (1.67, 640, 384), (1.75, 672, 384), (2.0, 704, 352),
    (2.09, 736, 352), (2.4, 768, 320), (2.5, 800, 320), (2.89, 832, 288), (3.0, 864, 288),
    (3.11, 896, 288), (3.62, 928, 256), (3.75, 960, 256), (3.88, 992, 256), (4.0, 1024, 256),
)


def scale_buckets(base: int, buckets=BUCKETS_512) -> tuple:
    """The bucket table for a `base` x `base` class instead of 512 x 512 (same ratios)."""
    if base <= 0 or base % 16:
        raise ValueError(f"bucket base resolution must be a positive multiple of 16, got {base}")
    return tuple((ratio, h * base // 512, w * base // 512) for ratio, h, w in buckets)


def nearest_bucket(height: int, width: int, buckets=BUCKETS_512) -> tuple[int, int]:
    """(height, width) of the bucket whose ratio is nearest `height / width` (first on ties)."""
    ratio = height / width
    _, h, w = min(buckets, key=lambda b: abs(b[0] - ratio))
    return h, w
