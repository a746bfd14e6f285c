"""Motion normalisation of 4DMoT: z-score per joint and axis, optionally minus the first frame.

The released model uses the z-score alone; the paper's "differential motion" also subtracts the
normalised first frame so every clip starts at zero. `denormalize` inverts either, given the
normalised first frame that `normalize` returns.
"""
from __future__ import annotations



def normalize(motion_mm, mean, std, differential: bool):
    """`[B, T, 24, 3]` mm → (model input, normalised first frame `[B, 1, 24, 3]`)."""
    z = (motion_mm - mean) / std
    first = z[:, :1]
    return (z - first if differential else z), first


def denormalize(x, mean, std, first, differential: bool):
    """Model output → millimetres (adds the first frame back for differential motion)."""
    z = x + first if differential else x
    return z * std + mean
