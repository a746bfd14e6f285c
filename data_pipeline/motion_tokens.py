"""Precomputed 4DMoT tokens of motion windows, as latent records store them (`motion_tokens`)."""
from __future__ import annotations

import numpy as np


def tokenize_windows(tokenizer, windows: np.ndarray) -> np.ndarray:
    """`[N, T, 24, 3]` mm → `[N, F·24, code_dim]` quantised 4DMoT vectors (`tokenizer`: a
    `mtvjax.models.fourdmot.tokenizer.Tokenizer`)."""
    quantized = tokenizer.tokenize(windows)["quantized"]
    return quantized.reshape(quantized.shape[0], -1, quantized.shape[-1]).astype(np.float32)
