"""Metrics for evaluating the 4DMoT motion tokenizer.

Two groups of small pure functions, all written in `jax.numpy`, jit-able and batch-friendly:

* Reconstruction error between decoded and ground-truth SMPL joint positions shaped
  `[..., frames, joints, 3]` (any leading batch axes), in the input units (millimetres for
  this project): `mpjpe`, `per_joint_mpjpe`, `root_aligned_mpjpe`, `pa_mpjpe` (after a per-frame
  similarity alignment by `procrustes_align`) and `acceleration_error`.
* Codebook usage from the token indices the quantizer emits: `code_histogram`, then
  `perplexity`, `active_code_fraction` and `sorted_usage` on the accumulated counts.

Everything returns JAX arrays; call `np.asarray` / `float` on the result where numpy is wanted
(plotting, logging). Inputs of lower precision than float32 are computed in float32.
"""
from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "mpjpe",
    "per_joint_mpjpe",
    "root_aligned_mpjpe",
    "procrustes_align",
    "pa_mpjpe",
    "acceleration_error",
    "code_histogram",
    "perplexity",
    "active_code_fraction",
    "sorted_usage",
]


def _float(x) -> jnp.ndarray:
    """`x` as a floating array of at least float32 precision."""
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _joint_errors(pred, target) -> jnp.ndarray:
    """Euclidean distance per joint: `[..., 3]` x2 -> `[...]`."""
    diff = _float(pred) - _float(target)
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


# ---------------------------------------------------------------------------------------------
# Reconstruction error
# ---------------------------------------------------------------------------------------------


def mpjpe(pred, target) -> jnp.ndarray:
    """Mean per-joint position error.

    Args:
      pred, target: joint positions `[..., frames, joints, 3]` (any leading axes), same shape.

    Returns:
      Scalar: the Euclidean distance between corresponding joints, averaged over every joint of
      every frame and batch element; in the input units (mm).
    """
    return jnp.mean(_joint_errors(pred, target))


def per_joint_mpjpe(pred, target) -> jnp.ndarray:
    """MPJPE broken down by joint.

    Args:
      pred, target: joint positions `[..., frames, joints, 3]`, same shape.

    Returns:
      `[joints]`: for each joint, its Euclidean error averaged over all leading axes and frames;
      in the input units (mm). Its mean equals `mpjpe(pred, target)`.
    """
    err = _joint_errors(pred, target)
    return jnp.mean(err.reshape(-1, err.shape[-1]), axis=0)


def root_aligned_mpjpe(pred, target, root: int = 0) -> jnp.ndarray:
    """MPJPE after moving the root joint of every frame to the origin.

    The root joint (the pelvis, joint 0, in SMPL) is subtracted per frame from `pred` and
    `target` separately, so a global translation of either sequence costs nothing.

    Args:
      pred, target: joint positions `[..., frames, joints, 3]`, same shape.
      root: index of the root joint along the joints axis (static under jit).

    Returns:
      Scalar, in the input units (mm).
    """
    pred = _float(pred)
    target = _float(target)
    pred = pred - pred[..., root : root + 1, :]
    target = target - target[..., root : root + 1, :]
    return mpjpe(pred, target)


def procrustes_align(pred, target) -> jnp.ndarray:
    """Align each frame of `pred` onto `target` by the best similarity transform (Umeyama).

    For every frame separately finds the scale `s > 0`, proper rotation `R` (det +1) and
    translation `t` minimising `sum_j |s R pred_j + t - target_j|^2` over the joints, via the SVD
    of the cross-covariance with the sign of the last singular direction flipped when the
    unconstrained optimum would be a reflection. A mirrored skeleton therefore stays mirrored
    (non-zero residual). A frame whose `pred` joints all coincide maps onto the centroid of
    `target`.

    Args:
      pred, target: joint positions `[..., joints, 3]` (typically `[..., frames, joints, 3]`),
        same shape.

    Returns:
      The aligned `pred`, same shape as the inputs, in the units of `target`.
    """
    x = _float(pred)
    y = _float(target)
    n_joints = x.shape[-2]
    mu_x = jnp.mean(x, axis=-2, keepdims=True)
    mu_y = jnp.mean(y, axis=-2, keepdims=True)
    xc = x - mu_x
    yc = y - mu_y
    var_x = jnp.sum(xc * xc, axis=(-2, -1)) / n_joints  # [...]
    # Cross-covariance Sigma = 1/n sum_j yc_j xc_j^T, shape [..., 3, 3].
    sigma = jnp.einsum("...ji,...jk->...ik", yc, xc) / n_joints
    u, d, vt = jnp.linalg.svd(sigma, full_matrices=False)
    det_sign = jnp.where(jnp.linalg.det(u) * jnp.linalg.det(vt) < 0, -1.0, 1.0).astype(x.dtype)
    # S = diag(1, ..., 1, det_sign): flip the weakest direction when the optimum is a reflection.
    signs = jnp.concatenate(
        [jnp.ones(d.shape[:-1] + (d.shape[-1] - 1,), x.dtype), det_sign[..., None]], axis=-1
    )
    rot = jnp.einsum("...ik,...k,...kj->...ij", u, signs, vt)  # R = U S V^T
    trace_ds = jnp.sum(d * signs, axis=-1)
    safe_var = jnp.where(var_x > 0, var_x, 1.0)
    scale = jnp.where(var_x > 0, trace_ds / safe_var, 0.0)
    # aligned_j = s R xc_j + mu_y  (equivalently s R x_j + t with t = mu_y - s R mu_x).
    aligned = scale[..., None, None] * jnp.einsum("...ij,...nj->...ni", rot, xc) + mu_y
    return aligned


def pa_mpjpe(pred, target) -> jnp.ndarray:
    """Procrustes-aligned MPJPE: `mpjpe(procrustes_align(pred, target), target)`.

    Args:
      pred, target: joint positions `[..., frames, joints, 3]`, same shape.

    Returns:
      Scalar, in the input units (mm); blind to per-frame global rotation, uniform scale and
      translation of `pred`.
    """
    return mpjpe(procrustes_align(pred, target), target)


def acceleration_error(pred, target) -> jnp.ndarray:
    """Mean error of the joint accelerations (second finite differences along frames).

    The acceleration at frame `t` is `x[t+1] - 2 x[t] + x[t-1]`, for the interior frames
    `1 .. frames-2`. The error is the Euclidean norm of the difference between the predicted and
    target accelerations, averaged over joints, interior frames and leading axes.

    Args:
      pred, target: joint positions `[..., frames, joints, 3]`, same shape, `frames >= 3`.

    Returns:
      Scalar, in input units per frame squared (mm/frame^2).

    Raises:
      ValueError: fewer than 3 frames (shapes are static, so also under jit).
    """
    pred = _float(pred)
    target = _float(target)
    if pred.ndim < 3 or pred.shape[-3] < 3:
        raise ValueError(f"acceleration_error needs [..., frames>=3, joints, 3], got {pred.shape}")

    def accel(x):
        return x[..., 2:, :, :] - 2.0 * x[..., 1:-1, :, :] + x[..., :-2, :, :]

    return mpjpe(accel(pred), accel(target))


# ---------------------------------------------------------------------------------------------
# Codebook usage
# ---------------------------------------------------------------------------------------------


def code_histogram(indices, codebook_size: int) -> jnp.ndarray:
    """How often each codebook entry occurs among the token indices.

    Args:
      indices: integer token indices of any shape.
      codebook_size: number of codebook entries `K` (static under jit).

    Returns:
      `[K]` int32 counts. Indices outside `[0, K)` are not counted (unlike `jnp.bincount`,
      which counts negative indices as 0). Sum histograms over batches to accumulate a pass.
    """
    idx = jnp.asarray(indices).reshape(-1).astype(jnp.int32)
    valid = (idx >= 0) & (idx < codebook_size)
    return (
        jnp.zeros((codebook_size,), jnp.int32)
        .at[jnp.where(valid, idx, 0)]
        .add(valid.astype(jnp.int32))
    )


def _frequencies(counts) -> jnp.ndarray:
    """Normalised histogram along the last axis; NaN where the histogram is empty."""
    counts = _float(counts)
    total = jnp.sum(counts, axis=-1, keepdims=True)
    return counts / jnp.where(total > 0, total, jnp.nan)


def perplexity(counts) -> jnp.ndarray:
    """Codebook perplexity: exp of the entropy (natural log) of the normalised histogram.

    Empty codes contribute `0 * log 0 = 0`. Equals `K` when all `K` codes are used equally
    often and 1 when a single code is used.

    Args:
      counts: code counts `[..., K]` (e.g. from `code_histogram`), non-negative.

    Returns:
      `[...]` (a scalar for a single histogram), in "effective number of codes"; NaN for an
      empty histogram.
    """
    p = _frequencies(counts)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    entropy = -jnp.sum(plogp, axis=-1)
    return jnp.where(jnp.isnan(p[..., 0]), jnp.nan, jnp.exp(entropy))


def active_code_fraction(counts) -> jnp.ndarray:
    """Fraction of codebook entries used at least once over the evaluation pass.

    Pass the histogram accumulated over all its batches (the sum of `code_histogram` over the
    pass), not a single batch's, which would understate usage.

    Args:
      counts: code counts `[..., K]`.

    Returns:
      `[...]` float in `[0, 1]`: the number of entries with count > 0 divided by `K`.
    """
    counts = jnp.asarray(counts)
    return jnp.mean((counts > 0).astype(jnp.float32), axis=-1)


def sorted_usage(counts) -> jnp.ndarray:
    """Code usage frequencies sorted from most to least used (for the codebook-usage plot).

    Args:
      counts: code counts `[..., K]`.

    Returns:
      `[..., K]` float fractions, descending along the last axis, summing to 1 (NaN for an empty
      histogram). Use `np.asarray` on the result for plotting.
    """
    p = _frequencies(counts)
    return jnp.flip(jnp.sort(p, axis=-1), axis=-1)
