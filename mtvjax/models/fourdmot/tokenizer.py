"""The 4DMoT tokenizer for users: restore it from a checkpoint and turn motion into tokens.

`Tokenizer(checkpoint_dir)` restores a trained or converted 4DMoT (its config travels with the
checkpoint): parameters, quantizer state and normalisation statistics only, never the optimiser
state. `FrozenTokenizer` runs it inside another model's jitted step (MV-DiT training), its state
passed in as an argument; `restore_tokenizer` builds one from a checkpoint folder.

`segment_motion` cuts a clip into consecutive segments of `frames` frames read at `stride`; the
tail that does not fill a segment is covered by one last segment aligned to the clip's end, which
overlaps the previous one (its `start` says by how much), so every frame is tokenised and all
segments have the same length. A clip shorter than one segment is an error.
"""
from __future__ import annotations

from typing import Any

import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtvjax.checkpoint.manager import abstract_like, read_config, restore_entries, stored_arrays
from mtvjax.models.fourdmot import quantizer as vq
from mtvjax.models.fourdmot.build import abstract_variables, build_model
from mtvjax.models.fourdmot.forward import forward, model_output_mm, switches
from mtvjax.models.fourdmot.model import FourDMoT, decoded_frames, latent_frames


class TokenizerState(flax.struct.PyTreeNode):
    """What inference needs of a 4DMoT checkpoint's train state (no optimiser state)."""
    step: jnp.ndarray
    params: Any
    quantizer: dict           # the `quantizer` collection; inference reads its `codebook`
    stats: dict               # {'mean', 'std'} [24, 3] normalisation statistics, millimetres


def abstract_state(model: FourDMoT) -> TokenizerState:
    """Shapes and dtypes of a `TokenizerState`, without allocating anything."""
    params, quantizer = abstract_variables(model)
    stats = jax.ShapeDtypeStruct((24, 3), jnp.float32)
    return TokenizerState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                          quantizer=quantizer, stats={"mean": stats, "std": stats})


def restore_state(checkpoint_dir: str, step: int, model: FourDMoT) -> TokenizerState:
    """The `TokenizerState` entries of a checkpoint's saved train state, on the first device."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_like(flax.serialization.to_state_dict(abstract_state(model)), device)
    abstract["quantizer"] = vq.as_saved(abstract["quantizer"],
                                        stored_arrays(checkpoint_dir, step, "quantizer"))
    restored = restore_entries(checkpoint_dir, step, abstract)
    return TokenizerState(**{**restored, "quantizer": vq.with_ever_used(restored["quantizer"])})


def mean_joint_error(pred, target) -> jnp.ndarray:
    """Euclidean distance between corresponding joints, averaged over every joint and frame
    (the MPJPE of `mtvjax.evaluate.metrics`, for one segment's float32 reconstruction)."""
    diff = pred - target
    return jnp.mean(jnp.sqrt(jnp.sum(diff * diff, axis=-1)))


def segment_motion(motion: np.ndarray, frames: int, stride: int = 1, name: str = "motion"):
    """`[T, 24, 3]` → (`[segments, frames, 24, 3]`, start frame of each segment)."""
    span = (frames - 1) * stride + 1
    total = motion.shape[0]
    if total < span:
        raise ValueError(f"{name}: {total} frames is too short for one segment of {frames} frames "
                         f"at stride {stride} ({span} frames needed)")
    starts = list(range(0, total - span + 1, frames * stride))
    if starts[-1] + span < total:
        starts.append(total - span)
    segments = np.stack([motion[s:s + span:stride] for s in starts])
    return segments, np.array(starts, np.int64)


class Tokenizer:
    """A restored 4DMoT with jitted tokenisation; `batch_size` segments run per call."""

    def __init__(self, checkpoint_dir: str, step: int | None = None, batch_size: int = 8):
        config_json, self.step = read_config(checkpoint_dir, step)
        self.config = ml_collections.ConfigDict(config_json)
        self.model = build_model(self.config.model)
        self.state = restore_state(checkpoint_dir, self.step, self.model)
        self.batch_size = batch_size
        self.switches = switches(self.config)
        self._run = jax.jit(self.tokenize_batch)

    @property
    def codebook_size(self) -> int:
        return int(self.config.model.codebook_size)

    def check_frames(self, frames: int) -> None:
        """Refuses frame counts whose decoded length differs (windows of 8 need T % 8 in {0, 1})."""
        window = self.config.model.window_frames
        latents = latent_frames(frames, window, len(self.config.model.channels))
        if decoded_frames(latents, self.model.latent_window, len(self.config.model.channels)) != frames:
            raise ValueError(f"{frames} frames do not round-trip through 4DMoT windows of {window}; "
                             f"use a count of the form 8k or 8k + 1 (e.g. 33, 49, 81, 97, 129)")

    def tokenize_batch(self, state: TokenizerState, motion_mm):
        """Traceable: `[b, frames, 24, 3]` mm → indices, quantised features, reconstruction,
        MPJPE of each segment."""
        sw = self.switches
        out = forward(self.model, state.params, state.quantizer["codebook"], motion_mm,
                      state.stats, sw)
        recon_mm = model_output_mm(out["recon"], out["first"], state.stats, sw)
        quantized = state.quantizer["codebook"][out["indices"]] if sw.quantize else out["z"]
        return {"indices": out["indices"].astype(jnp.int32), "quantized": quantized,
                "recon_mm": recon_mm,
                "mpjpe_mm": jax.vmap(mean_joint_error)(recon_mm,
                                                       motion_mm[..., :sw.coord_dim])}

    def tokenize(self, segments_mm: np.ndarray) -> dict[str, np.ndarray]:
        """`[N, frames, 24, 3]` mm → indices `[N, L, 24]`, quantised features, reconstruction, MPJPE."""
        self.check_frames(segments_mm.shape[1])
        outputs = []
        for start in range(0, len(segments_mm), self.batch_size):
            chunk = np.asarray(segments_mm[start:start + self.batch_size], np.float32)
            pad = self.batch_size - len(chunk)          # one compiled shape for every chunk
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
            out = jax.device_get(self._run(self.state, padded))
            outputs.append({k: v[:len(chunk)] for k, v in out.items()})
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


class FrozenTokenizer:
    """A restored `Tokenizer` whose state travels in a jitted step's `frozen` argument; tokens are
    the tokenizer's own `quantized` output (what the data pipeline stores with
    `tokens.kind="tokenizer"`), flattened frame-major, without gradient."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, frozen: TokenizerState, motion_mm):
        tokens = self.tokenizer.tokenize_batch(frozen, motion_mm)["quantized"]  # [b, L, 24, w]
        return jax.lax.stop_gradient(tokens.reshape(tokens.shape[0], -1, tokens.shape[-1]))


def restore_tokenizer(checkpoint: str, step: int | None = None):
    """(FrozenTokenizer, frozen state, code width, 4DMoT config) of a 4DMoT checkpoint folder;
    a negative or absent `step` means the latest."""
    tok = Tokenizer(checkpoint, step=None if step is None or step < 0 else step)
    return FrozenTokenizer(tok), tok.state, int(tok.config.model.code_dim), tok.config
