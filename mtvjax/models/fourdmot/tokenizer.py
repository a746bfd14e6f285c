"""The 4DMoT tokenizer for users: restore it from a checkpoint and turn motion into tokens.

`Tokenizer(checkpoint_dir)` restores a trained or converted 4DMoT (its config travels with the
checkpoint). `segment_motion` cuts a clip into consecutive segments of `frames` frames read at
`stride`; the tail that does not fill a segment is covered by one last segment aligned to the
clip's end, which overlaps the previous one (its `start` says by how much), so every frame is
tokenised and all segments have the same length. A clip shorter than one segment is an error.
"""
from __future__ import annotations

import ml_collections
import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.checkpoint.manager import Checkpointer, abstract_like, read_config
from mtvjax.evaluate.metrics import mpjpe
from mtvjax.models.fourdmot.model import decoded_frames, latent_frames
from mtvjax.train import fourdmot_step as steps


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
        self.model = steps.build_model(self.config.model)
        tx = steps.make_optimizer(self.config)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = abstract_like(steps.abstract_state(self.config, self.model, tx), device)
        checkpointer = Checkpointer(checkpoint_dir, keep=None, create=False)
        self.state = checkpointer.restore(self.step, abstract)
        checkpointer.close()
        self.batch_size = batch_size
        self.switches = steps.switches(self.config)
        self._run = jax.jit(self._tokenize_batch)

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

    def _tokenize_batch(self, state, motion_mm):
        sw = self.switches
        out = steps.forward(self.model, state.params, state.quantizer["codebook"], motion_mm,
                            state.stats, sw)
        recon_mm = steps.model_output_mm(out["recon"], out["first"], state.stats, sw)
        quantized = state.quantizer["codebook"][out["indices"]] if sw.quantize else out["z"]
        return {"indices": out["indices"].astype(jnp.int32), "quantized": quantized,
                "recon_mm": recon_mm,
                "mpjpe_mm": jax.vmap(mpjpe)(recon_mm, motion_mm[..., :sw.coord_dim])}

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
