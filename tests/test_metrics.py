"""Tests for mtvjax.evaluate.metrics: hand-computed cases plus an independent scipy check."""
from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from mtvjax.evaluate import metrics

FRAMES, JOINTS = 5, 24


def _skeleton(seed=0, frames=FRAMES, joints=JOINTS, batch=()):
    """Random non-planar joint positions in mm, `[*batch, frames, joints, 3]`."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=batch + (frames, joints, 3)) * 300.0).astype(np.float32)


def _fit_linear(src, dst):
    """Least-squares 3x3 `M` with `dst_c ~= src_c @ M` for centred points of one frame."""
    src_c = src - src.mean(0)
    dst_c = dst - dst.mean(0)
    m, *_ = np.linalg.lstsq(src_c.astype(np.float64), dst_c.astype(np.float64), rcond=None)
    return m


def _scipy_umeyama(x, y):
    """Independent per-frame similarity alignment of `x` onto `y` with scipy (proper rotation)."""
    out = np.empty_like(x, dtype=np.float64)
    for f in range(x.shape[0]):
        xc = x[f] - x[f].mean(0)
        yc = y[f] - y[f].mean(0)
        rot, _ = Rotation.align_vectors(yc, xc)  # minimises sum |yc - R xc|^2, det(R) = +1
        rx = rot.apply(xc)
        scale = np.sum(yc * rx) / np.sum(xc * xc)
        out[f] = scale * rx + y[f].mean(0)
    return out


class PositionErrorTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_mpjpe_constant_offset(self):
        target = _skeleton(batch=(2,))
        pred = target + np.array([3.0, 4.0, 0.0], np.float32)
        out = self.variant(metrics.mpjpe)(pred, target)
        chex.assert_shape(out, ())
        chex.assert_trees_all_close(out, 5.0, atol=1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mpjpe_zero_for_identical(self):
        target = _skeleton()
        chex.assert_trees_all_close(self.variant(metrics.mpjpe)(target, target), 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_joint_mpjpe_picks_perturbed_joint(self):
        target = _skeleton(batch=(3,))
        pred = target.copy()
        pred[..., 7, :] += np.array([0.0, 6.0, 8.0], np.float32)
        out = self.variant(metrics.per_joint_mpjpe)(pred, target)
        chex.assert_shape(out, (JOINTS,))
        expected = np.zeros(JOINTS, np.float32)
        expected[7] = 10.0
        chex.assert_trees_all_close(out, expected, atol=1e-3)
        chex.assert_trees_all_close(jnp.mean(out), metrics.mpjpe(pred, target), atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_root_alignment_removes_translation(self):
        target = _skeleton()
        # A different translation per frame; still removed frame by frame.
        shift = np.array([[0.0, 30.0, 40.0]] * FRAMES, np.float32)[:, None, :]
        pred = target + shift
        aligned = self.variant(metrics.root_aligned_mpjpe, static_argnames="root")
        chex.assert_trees_all_close(aligned(pred, target), 0.0, atol=1e-3)
        chex.assert_trees_all_close(aligned(pred, target, root=3), 0.0, atol=1e-3)
        chex.assert_trees_all_close(metrics.mpjpe(pred, target), 50.0, atol=1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_root_alignment_keeps_pose_error(self):
        target = _skeleton()
        pred = target.copy()
        pred[:, 0, :] += np.array([5.0, 0.0, 0.0], np.float32)  # only the pelvis moves
        # After alignment every non-root joint is off by the pelvis displacement (5 mm).
        out = self.variant(metrics.root_aligned_mpjpe)(pred, target)
        chex.assert_trees_all_close(out, 5.0 * (JOINTS - 1) / JOINTS, atol=1e-3)


class ProcrustesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_recovers_similarity_transform(self):
        target = _skeleton(seed=1)
        rots = Rotation.random(FRAMES, random_state=2).as_matrix().astype(np.float32)
        scales = np.linspace(0.5, 2.0, FRAMES, dtype=np.float32)
        trans = np.random.default_rng(3).normal(size=(FRAMES, 1, 3)).astype(np.float32) * 500
        # pred = s R target + t, per frame: alignment must undo it exactly.
        pred = scales[:, None, None] * np.einsum("fij,fnj->fni", rots, target) + trans
        aligned = self.variant(metrics.procrustes_align)(pred, target)
        chex.assert_shape(aligned, target.shape)
        chex.assert_trees_all_close(aligned, target, atol=0.05)
        err = self.variant(metrics.pa_mpjpe)(pred, target)
        self.assertLess(float(err), 0.05)
        self.assertGreater(float(metrics.mpjpe(pred, target)), 100.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_reflection_stays_a_proper_rotation(self):
        target = _skeleton(seed=4)
        pred = target * np.array([-1.0, 1.0, 1.0], np.float32)  # mirrored skeleton
        aligned = np.asarray(self.variant(metrics.procrustes_align)(pred, target))
        for f in range(FRAMES):
            m = _fit_linear(pred[f], aligned[f])  # = s R^T, recovered from the output
            self.assertGreater(np.linalg.det(m), 0.0)
            s = np.cbrt(np.linalg.det(m))
            np.testing.assert_allclose(m.T @ m / s**2, np.eye(3), atol=1e-4)
            # An orthogonal (reflection-allowing) fit would map the mirror back exactly.
            q, _ = orthogonal_procrustes(pred[f] - pred[f].mean(0), target[f] - target[f].mean(0))
            self.assertLess(np.linalg.det(q), 0.0)
        err = float(self.variant(metrics.pa_mpjpe)(pred, target))
        self.assertGreater(err, 10.0)
        chex.assert_trees_all_close(aligned, _scipy_umeyama(pred, target), atol=0.05)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_scipy_on_random_case(self):
        target = _skeleton(seed=5, batch=(2,))
        rng = np.random.default_rng(6)
        rots = Rotation.random(2 * FRAMES, random_state=7).as_matrix().reshape(2, FRAMES, 3, 3)
        pred = 1.3 * np.einsum("bfij,bfnj->bfni", rots, target) + 40.0
        pred = (pred + rng.normal(size=pred.shape) * 50.0).astype(np.float32)
        aligned = np.asarray(self.variant(metrics.procrustes_align)(pred, target))
        for b in range(2):
            chex.assert_trees_all_close(aligned[b], _scipy_umeyama(pred[b], target[b]), atol=0.05)
        # Cross-check with scipy.linalg.orthogonal_procrustes (same rotation when it is proper).
        xc = pred[0, 0] - pred[0, 0].mean(0)
        yc = target[0, 0] - target[0, 0].mean(0)
        q, _ = orthogonal_procrustes(xc, yc)  # xc @ q ~= yc
        self.assertGreater(np.linalg.det(q), 0.0)
        s = np.sum((xc @ q) * yc) / np.sum(xc * xc)
        chex.assert_trees_all_close(
            aligned[0, 0], s * xc @ q + target[0, 0].mean(0), atol=0.05
        )
        expected = np.mean(np.linalg.norm(_scipy_umeyama(pred[1], target[1]) - target[1], axis=-1))
        chex.assert_trees_all_close(
            metrics.pa_mpjpe(pred[1], target[1]), expected, rtol=1e-4
        )

    def test_degenerate_frame_maps_to_target_centroid(self):
        target = _skeleton(seed=8, frames=1)
        pred = np.ones_like(target)  # all joints coincide
        aligned = np.asarray(metrics.procrustes_align(pred, target))
        self.assertTrue(np.all(np.isfinite(aligned)))
        chex.assert_trees_all_close(
            aligned, np.broadcast_to(target.mean(-2, keepdims=True), target.shape), atol=1e-3
        )


class AccelerationErrorTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_constant_velocity_offset_is_zero(self):
        target = _skeleton(frames=8)
        t = np.arange(8, dtype=np.float32)[:, None, None]
        pred = target + 100.0 + t * np.array([1.0, -2.0, 3.0], np.float32)
        out = self.variant(metrics.acceleration_error)(pred, target)
        chex.assert_trees_all_close(out, 0.0, atol=1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_quadratic_offset(self):
        target = _skeleton(frames=8, batch=(2,))
        t = np.arange(8, dtype=np.float32)[:, None, None]
        # offset (3, 4, 0) t^2: second difference = 2 (3, 4, 0) = (6, 8, 0), norm 10 mm/frame^2.
        pred = target + t**2 * np.array([3.0, 4.0, 0.0], np.float32)
        out = self.variant(metrics.acceleration_error)(pred, target)
        chex.assert_shape(out, ())
        chex.assert_trees_all_close(out, 10.0, atol=1e-2)

    def test_too_few_frames(self):
        x = _skeleton(frames=2)
        with pytest.raises(ValueError):
            metrics.acceleration_error(x, x)


class CodebookUsageTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_histogram(self):
        idx = np.array([[0, 3, 3], [15, 3, 0]], np.int32)
        counts = self.variant(metrics.code_histogram, static_argnames="codebook_size")(
            idx, codebook_size=16
        )
        chex.assert_shape(counts, (16,))
        self.assertEqual(counts.dtype, jnp.int32)
        expected = np.zeros(16, np.int32)
        expected[[0, 3, 15]] = [2, 3, 1]
        np.testing.assert_array_equal(np.asarray(counts), expected)

    def test_histogram_ignores_out_of_range(self):
        counts = metrics.code_histogram(np.array([-1, 0, 4, 5, 2]), 4)
        np.testing.assert_array_equal(np.asarray(counts), [1, 0, 1, 0])

    @chex.variants(with_jit=True, without_jit=True)
    def test_uniform_over_half_the_codebook(self):
        idx = np.repeat(np.arange(0, 16, 2), 5)  # 8 of 16 codes, 5 times each
        counts = metrics.code_histogram(idx, 16)
        chex.assert_trees_all_close(self.variant(metrics.perplexity)(counts), 8.0, rtol=1e-5)
        chex.assert_trees_all_close(
            self.variant(metrics.active_code_fraction)(counts), 0.5
        )
        usage = self.variant(metrics.sorted_usage)(counts)
        chex.assert_shape(usage, (16,))
        chex.assert_trees_all_close(usage, np.r_[np.full(8, 1 / 8), np.zeros(8)], atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_perplexity_extremes(self):
        perp = self.variant(metrics.perplexity)
        chex.assert_trees_all_close(perp(jnp.full((16,), 3)), 16.0, rtol=1e-5)
        one = jnp.zeros((16,), jnp.int32).at[5].set(42)
        chex.assert_trees_all_close(perp(one), 1.0)
        # Hand-computed: p = (1/2, 1/4, 1/4) -> H = 1.5 ln 2 -> perplexity 2^1.5.
        chex.assert_trees_all_close(perp(jnp.array([2, 1, 1, 0])), 2.0**1.5, rtol=1e-5)
        self.assertTrue(np.isnan(float(perp(jnp.zeros((4,), jnp.int32)))))

    def test_batched_counts(self):
        counts = jnp.array([[1, 1, 0, 0], [4, 0, 0, 0]])
        chex.assert_trees_all_close(metrics.perplexity(counts), jnp.array([2.0, 1.0]), rtol=1e-5)
        chex.assert_trees_all_close(
            metrics.active_code_fraction(counts), jnp.array([0.5, 0.25])
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_sorted_usage_descending(self):
        counts = jnp.array([1, 5, 0, 2, 2])
        usage = self.variant(metrics.sorted_usage)(counts)
        chex.assert_trees_all_close(usage, jnp.array([0.5, 0.2, 0.2, 0.1, 0.0]), atol=1e-7)
        chex.assert_trees_all_close(jnp.sum(usage), 1.0, rtol=1e-6)
