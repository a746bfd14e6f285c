"""EMA vector quantizer of 4DMoT as pure functions over an explicit state.

The state lives in the non-trainable variable collection `quantizer`:
  codebook    `[K, D]`  code vectors (never trained by gradient)
  ema_sum     `[K, D]`  exponential moving average of the sum of vectors assigned to each code
  ema_count   `[K]`     exponential moving average of how many vectors each code received
  initialized `[]` bool whether the codebook has been filled from encoder outputs
  step        `[]` int32 number of EMA updates applied
  ever_used   `[K]` bool whether the code was alive (EMA count >= `dead_threshold`) after some
              update that was not a reset step; never cleared, kept under either reset rule

`update_state` is what a train step calls: it fills the codebook from the first batch, applies
the EMA update and, every `reset_every` updates, re-seeds dead codes (EMA count below
`dead_threshold`) from random encoder outputs of the current batch, re-seeding their EMA sums
and counts too. Which dead codes are re-seeded is `reset_rule`:
  "paper"     every dead code (the paper's rule; the default)
  "released"  only dead codes outside `ever_used` (what the released trainer's code does: a code
              that was alive once is never re-seeded again); its other defects (stale EMA sums
              of re-seeded codes, per-device statistics) are not reproduced
Statistics are reduced over the *global* batch: under `jit` with the batch
sharded over data-parallel devices the sums below are all-reduced by XLA, so every replica
holds the same codebook and the result does not depend on how the batch is split.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

COLLECTION = "quantizer"
RESET_RULES = ("paper", "released")


class QuantizerSettings(NamedTuple):
    decay: float = 0.99
    dead_threshold: float = 1.0
    reset_every: int = 20
    init_noise: float = 0.01  # the tiling noise std is init_noise / sqrt(code_dim)
    reset_rule: str = "paper"  # one of RESET_RULES: which dead codes a reset step re-seeds


class Codebook(nn.Module):
    """Declares the quantizer state; all arithmetic on it is in the pure functions below."""

    codebook_size: int
    code_dim: int

    @nn.compact
    def __call__(self):
        k, d = self.codebook_size, self.code_dim
        return {
            "codebook": self.variable(COLLECTION, "codebook", jnp.zeros, (k, d), jnp.float32).value,
            "ema_sum": self.variable(COLLECTION, "ema_sum", jnp.zeros, (k, d), jnp.float32).value,
            "ema_count": self.variable(COLLECTION, "ema_count", jnp.zeros, (k,), jnp.float32).value,
            "initialized": self.variable(COLLECTION, "initialized", lambda: jnp.array(False)).value,
            "step": self.variable(COLLECTION, "step", lambda: jnp.array(0, jnp.int32)).value,
            "ever_used": self.variable(COLLECTION, "ever_used", jnp.zeros, (k,), jnp.bool_).value,
        }


def as_saved(abstract: dict, saved_names) -> dict:
    """The entries of an abstract state to restore from a checkpoint whose quantizer holds
    `saved_names`: one written before `ever_used` existed is restored without it."""
    return {k: v for k, v in abstract.items() if k != "ever_used" or k in saved_names}


def with_ever_used(state: dict) -> dict:
    """A state restored without `ever_used` (see `as_saved`), with an empty mask as a fresh run
    starts with; a state that has the mask is returned as it is."""
    if "ever_used" in state:
        return state
    return {**state, "ever_used": jnp.zeros(state["ema_count"].shape, jnp.bool_)}


def nearest_codes(codebook: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """Index of the nearest code (squared Euclidean distance) for each vector of `z [..., D]`."""
    flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    distances = (jnp.sum(flat ** 2, axis=1, keepdims=True)
                 - 2.0 * jnp.dot(flat, codebook.T, precision="highest")
                 + jnp.sum(codebook ** 2, axis=1)[None, :])
    return jnp.argmin(distances, axis=1).reshape(z.shape[:-1])


def quantize(codebook: jnp.ndarray, z: jnp.ndarray):
    """Quantises `z [..., D]`: returns (straight-through quantised z, code indices, commitment).

    The commitment loss is `mean((z - stop_gradient(q))**2)`: it pulls the encoder towards its
    codes; the codebook itself moves only by the EMA update.
    """
    indices = nearest_codes(codebook, z)
    q = codebook[indices].astype(z.dtype)
    commitment = jnp.mean((z - jax.lax.stop_gradient(q)) ** 2)
    q_straight_through = z + jax.lax.stop_gradient(q - z)
    return q_straight_through, indices, commitment


def _sample_vectors(vectors: jnp.ndarray, count: int, rng: jax.Array, noise_std: float):
    """`count` random rows of `vectors`, tiled with Gaussian noise when there are too few rows."""
    n = vectors.shape[0]
    repeats = -(-count // n)
    pool = vectors
    if repeats > 1:
        rng, noise_rng = jax.random.split(rng)
        pool = jnp.tile(vectors, (repeats, 1))
        pool = pool + noise_std * jax.random.normal(noise_rng, pool.shape, pool.dtype)
    order = jax.random.permutation(rng, pool.shape[0])[:count]
    return pool[order]


def initialize_from_batch(state: dict, z_flat: jnp.ndarray, rng: jax.Array,
                          settings: QuantizerSettings) -> dict:
    """Fills an uninitialised codebook with encoder outputs (count 1 per code); else no-op."""
    k, d = state["codebook"].shape

    def fill(state):
        codes = _sample_vectors(z_flat, k, rng, settings.init_noise / d ** 0.5)
        return {**state, "codebook": codes, "ema_sum": codes,
                "ema_count": jnp.ones((k,), jnp.float32), "initialized": jnp.array(True)}

    return jax.lax.cond(state["initialized"], lambda s: s, fill, state)


def ema_update(state: dict, z_flat: jnp.ndarray, indices: jnp.ndarray,
               settings: QuantizerSettings) -> dict:
    """One EMA step of per-code sums and counts; the codebook becomes sum / count."""
    indices = indices.reshape(-1)
    # Scatter-adds into the decayed sums, not one-hot matmuls: O(N·D) work instead of O(N·K·D),
    # and no [K, D] batch-sum buffer besides the state's own.
    decay = settings.decay
    ema_sum = (decay * state["ema_sum"]).at[indices].add((1.0 - decay) * z_flat.astype(jnp.float32))
    ema_count = (decay * state["ema_count"]).at[indices].add(1.0 - decay)
    codebook = ema_sum / jnp.maximum(ema_count, 1e-12)[:, None]
    return {**state, "codebook": codebook, "ema_sum": ema_sum, "ema_count": ema_count,
            "step": state["step"] + 1}


def dead_codes(state: dict, settings: QuantizerSettings) -> jnp.ndarray:
    """Codes whose EMA count is below the threshold: `[K]` bool."""
    return state["ema_count"] < settings.dead_threshold


def resettable_codes(state: dict, settings: QuantizerSettings) -> jnp.ndarray:
    """Codes a reset step re-seeds under `settings.reset_rule`: `[K]` bool."""
    dead = dead_codes(state, settings)
    if settings.reset_rule == "released":
        return dead & ~state["ever_used"]
    return dead


def mark_used(state: dict, settings: QuantizerSettings) -> dict:
    """Adds the codes alive now to `ever_used` (called after non-reset updates only)."""
    return {**state, "ever_used": state["ever_used"] | ~dead_codes(state, settings)}


def reset_dead_codes(state: dict, z_flat: jnp.ndarray, rng: jax.Array,
                     settings: QuantizerSettings) -> dict:
    """Moves the resettable codes onto random current encoder outputs, re-seeding sum and count
    to that one vector."""
    k, d = state["codebook"].shape
    dead = resettable_codes(state, settings)
    replacement = _sample_vectors(z_flat.astype(jnp.float32), k, rng, settings.init_noise / d ** 0.5)
    mask = dead[:, None]
    return {**state,
            "codebook": jnp.where(mask, replacement, state["codebook"]),
            "ema_sum": jnp.where(mask, replacement, state["ema_sum"]),
            "ema_count": jnp.where(dead, 1.0, state["ema_count"])}


def update_state(state: dict, z: jnp.ndarray, indices: jnp.ndarray, rng: jax.Array,
                 settings: QuantizerSettings) -> tuple[dict, dict]:
    """The train-step update: EMA step, then the periodic dead-code reset.

    `z` are the (stop-gradient) encoder outputs `[..., D]` the indices were computed from,
    with the codebook already initialised by `initialize_from_batch`. Returns the new state
    and metrics: `dead_codes` (count before any reset), `codes_reset` and `ever_used` (size of
    the mask after this update).
    """
    z_flat = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]).astype(jnp.float32)
    state = ema_update(state, z_flat, indices, settings)
    num_dead = dead_codes(state, settings).sum()
    num_resettable = resettable_codes(state, settings).sum()
    due = (state["step"] % settings.reset_every) == 0
    state = jax.lax.cond(due, lambda s: reset_dead_codes(s, z_flat, rng, settings),
                         lambda s: mark_used(s, settings), state)
    return state, {"dead_codes": num_dead, "codes_reset": jnp.where(due, num_resettable, 0),
                   "ever_used": state["ever_used"].sum()}

