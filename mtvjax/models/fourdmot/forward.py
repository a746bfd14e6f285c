"""The 4DMoT forward pass from millimetres to tokens and back, under the ablation switches.

`forward` normalises motion with a checkpoint's statistics, encodes, quantises (or not) and
decodes; `model_output_mm` maps the decoder output back to millimetres. The training loss, the
evaluation and the tokenizer all run through these functions.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from mtvjax.models.fourdmot import quantizer as vq
from mtvjax.models.fourdmot.model import FourDMoT
from mtvjax.models.fourdmot.normalization import denormalize, normalize


class Switches(NamedTuple):
    """The tokenizer's ablation switches (paper Table: quantisation, differential motion, depth)."""
    differential: bool = False   # subtract the normalised first frame
    coord_dim: int = 3           # 2: "3D quantisation" over (t, x, y), depth dropped
    quantize: bool = True        # False: continuous tokens, quantizer bypassed


def switches(config) -> Switches:
    return Switches(differential=bool(config.normalization.differential),
                    coord_dim=int(config.model.get("coord_dim", 3)),
                    quantize=bool(config.quantizer.get("enabled", True)))


def model_input(motion_mm, stats, sw: Switches):
    """Millimetres → (model input, normalised first frame), over the used coordinates."""
    c = sw.coord_dim
    return normalize(motion_mm[..., :c], stats["mean"][..., :c], stats["std"][..., :c],
                     sw.differential)


def model_output_mm(recon, first, stats, sw: Switches):
    """Decoder output → millimetres over the used coordinates."""
    c = sw.coord_dim
    return denormalize(recon, stats["mean"][..., :c], stats["std"][..., :c], first, sw.differential)


def quantize_tokens(codebook, z, sw: Switches):
    """(tokens the decoder sees, code indices or -1, commitment loss)."""
    if sw.quantize:
        return vq.quantize(codebook, z)
    return z, jnp.full(z.shape[:-1], -1, jnp.int32), jnp.zeros((), z.dtype)


def forward(model: FourDMoT, params, codebook, motion_mm, stats, sw: Switches):
    """Normalise, encode, quantise and decode; the pieces a loss or an evaluation needs."""
    x, first = model_input(motion_mm, stats, sw)
    z = model.apply({"params": params}, x, method=FourDMoT.encode)
    q, indices, commitment = quantize_tokens(codebook, z, sw)
    recon = model.apply({"params": params}, q, method=FourDMoT.decode)
    return {"input": x, "first": first, "z": z, "indices": indices, "commitment": commitment,
            "recon": recon}
