"""Interspatial attention: camera projection to NDC, 3-D points per latent frame, the symmetric
block (both directions, per-frame mask, zero-initialised video output) and Plücker rays."""
from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtvjax.data.skeleton import BONES
from mtvjax.models.mvdit import camera as C
from mtvjax.models.mvdit import isa as I

WIDTH, HEADS = 24, 2
GRID = (3, 2, 3)                     # latent frames, h, w
BATCH = 2


def _randn(shape, seed=0, scale=1.0, offset=0.0):
    x = np.random.default_rng(seed).normal(size=shape) * scale + offset
    return jnp.asarray(x.astype(np.float32))


def _points(seed=0, frames=GRID[0], num=24):
    """Points around 3 m in front of the camera, within ±0.8 m laterally (mm)."""
    xyz = np.random.default_rng(seed).uniform(-800.0, 800.0, (BATCH, frames, num, 3))
    xyz[..., 2] += 3000.0
    return jnp.asarray(xyz.astype(np.float32))


def _rotation(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


# ----------------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (512, 512)])
def test_default_camera_ndc(size):
    cam = C.Camera.default(size)
    tan = math.tan(math.radians(C.DEFAULT_FOV_DEGREES) / 2)
    h, w = size
    z = 2500.0
    axis = C.project_to_ndc(jnp.array([0.0, 0.0, z]), cam)
    np.testing.assert_allclose(axis, [0.0, 0.0, math.log(2.5)], atol=1e-6)
    # The field-of-view edges of the longer side land at ±1; the shorter side's image edges
    # (at tan·short/long) too.
    edge_x = tan * z * (1.0 if w >= h else w / h)
    edge_y = tan * z * (1.0 if h >= w else h / w)
    pts = jnp.array([[edge_x, 0, z], [-edge_x, 0, z], [0, edge_y, z], [0, -edge_y, z]])
    ndc = C.project_to_ndc(pts, cam)
    np.testing.assert_allclose(ndc[:, :2], [[1, 0], [-1, 0], [0, 1], [0, -1]], atol=1e-5)
    # x right / y down: a point right and below the axis lands at positive x and y.
    assert bool(jnp.all(C.project_to_ndc(jnp.array([100.0, 100.0, z]), cam)[:2] > 0))


def test_explicit_camera_matches_default():
    size = (360, 640)
    pts = _points(1)
    default = C.project_to_ndc(pts, C.Camera.default(size))
    explicit = C.Camera.from_matrices(C.default_intrinsics(size), size)
    chex.assert_trees_all_close(C.project_to_ndc(pts, explicit), default, atol=1e-6)
    # The same scene seen through extrinsics: world points X_w = Rᵀ(X_c − t).
    rot, t = _rotation(2), np.array([120.0, -40.0, 500.0])
    world = jnp.einsum("ji,...j->...i", rot, np.asarray(pts) - t)
    posed = C.Camera.from_matrices(C.default_intrinsics(size), size, rot, t)
    chex.assert_trees_all_close(C.project_to_ndc(world, posed), default, atol=1e-4)
    # Per-sample cameras broadcast over frames and points.
    batched = C.Camera.from_matrices(jnp.stack([C.default_intrinsics(size)] * BATCH), size)
    chex.assert_trees_all_close(C.project_to_ndc(pts, batched), default, atol=1e-6)


def test_depth_modes():
    z = jnp.array([500.0, 1000.0, 4000.0])
    np.testing.assert_allclose(C.depth_coordinate(z, "log"), np.log([0.5, 1.0, 4.0]), atol=1e-6)
    np.testing.assert_allclose(C.depth_coordinate(z, "metres"), [0.5, 1.0, 4.0], atol=1e-6)
    np.testing.assert_array_equal(C.depth_coordinate(z, "none"), 0.0)
    with pytest.raises(ValueError):
        C.depth_coordinate(z, "inverse")


def test_video_token_centres():
    ndc = C.video_token_ndc((2, 2, 4))
    chex.assert_shape(ndc, (16, 3))
    np.testing.assert_allclose(ndc[:4, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(ndc[[0, 4], 1], [-0.5, 0.5])
    np.testing.assert_array_equal(ndc[8:], ndc[:8])          # every frame the same grid
    np.testing.assert_array_equal(ndc[:, 2], 0.0)


def test_plucker_rays():
    size = (240, 320)
    cam = C.Camera.from_matrices(C.default_intrinsics(size), size, _rotation(3),
                                 np.array([300.0, -200.0, 1000.0]))
    rays = C.plucker_rays(cam, 4, 5)
    chex.assert_shape(rays, (20, 6))
    d, m = rays[:, :3], rays[:, 3:]
    np.testing.assert_allclose(jnp.linalg.norm(d, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(d * m, axis=-1), 0.0, atol=1e-5)
    assert float(jnp.abs(m).max()) > 0.1                       # off-origin camera
    # The default camera: the centre token's ray is the optical axis, moments are zero.
    rays = C.plucker_rays(C.Camera.default(size), 3, 3)
    np.testing.assert_allclose(rays[4], [0, 0, 1, 0, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(rays[:, 3:], 0.0)
    # Per-sample cameras give per-sample rays.
    batched = C.Camera.from_matrices(jnp.stack([C.default_intrinsics(size)] * 2), size)
    chex.assert_shape(C.plucker_rays(batched, 3, 3), (2, 9, 6))


# ----------------------------------------------------------------------------------------------
# Points per latent frame
# ----------------------------------------------------------------------------------------------


def test_latent_frame_grouping():
    np.testing.assert_array_equal(I.latent_frame_indices(3), [[0, 0, 0, 0], [1, 2, 3, 4],
                                                              [5, 6, 7, 8]])
    np.testing.assert_array_equal(I.latent_frame_indices(3, "last"), [[0], [4], [8]])
    motion = _randn((BATCH, 9, 24, 3), 4)
    pts = I.latent_frame_points(motion)
    chex.assert_shape(pts, (BATCH, 3, 96, 3))
    np.testing.assert_array_equal(pts[:, 1].reshape(BATCH, 4, 24, 3), motion[:, 1:5])
    np.testing.assert_array_equal(pts[:, 0, 72:], motion[:, 0])
    last = I.latent_frame_points(motion, frame_rule="last")
    np.testing.assert_array_equal(last, motion[:, ::4])
    with pytest.raises(ValueError):
        I.latent_frame_points(motion[:, :8])                    # not 4k + 1 frames


def test_bone_points():
    joints = _randn((5, 24, 3), 5)
    pts = I.bone_points(joints, 3)
    assert pts.shape == (5, 24 + 23 * 3, 3) == (5, I.points_per_latent_frame(3, "last"), 3)
    np.testing.assert_array_equal(pts[:, :24], joints)
    parent, child = BONES[4]
    np.testing.assert_allclose(pts[:, 24 + 4 * 3 + 1], 0.5 * (joints[:, parent] + joints[:, child]),
                               atol=1e-6)
    assert I.latent_frame_points(_randn((1, 5, 24, 3)), 3).shape == (1, 2, 4 * 93, 3)


def test_encodings():
    x = _randn((4, 3), 6)
    chex.assert_shape(I.fourier_features(x, 5), (4, 33))
    enc = I.ndc_encoding(x, 20)                                  # 3 frequencies/axis + 2 pad
    chex.assert_shape(enc, (4, 20))
    np.testing.assert_array_equal(enc[:, 18:], 0.0)
    freqs = math.pi * 64.0 ** (jnp.arange(3) / 2)
    np.testing.assert_allclose(enc[:, :3], jnp.sin(x[:, :1] * freqs), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The block
# ----------------------------------------------------------------------------------------------


IMAGE = (64, 96)                     # pixels the explicit cameras refer to (aspect of GRID)
HW = GRID[1] * GRID[2]


class Harness:
    """One ISA block (with the Plücker embedding) compiled once: `run(params, video, points,
    mask, camera)` and its gradient, shared by the block tests."""

    def __init__(self):
        self.block = I.ISABlock(WIDTH, HEADS, mlp_hidden=16, num_frequencies=2, plucker=True)
        self.video = _randn((BATCH, math.prod(GRID), WIDTH), 7)
        self.points = _points(8)
        self.mask = jnp.ones(self.points.shape[:3], bool)
        self.camera = C.Camera.default(IMAGE)
        init = jax.jit(lambda key: self.block.init(key, self.video, GRID, self.points,
                                                   self.camera, point_mask=self.mask))
        self.params = nn.meta.unbox(init(jax.random.PRNGKey(0))["params"])

        def run(params, video, points, mask, camera):
            return self.block.apply({"params": params}, video, GRID, points, camera,
                                    point_mask=mask)
        self._run = jax.jit(run)
        self._grad = jax.jit(jax.grad(lambda *a: jnp.sum(run(*a)[0] ** 2)))

    def run(self, params, video=None, points=None, mask=None, camera=None):
        return self._run(params, self.video if video is None else video,
                         self.points if points is None else points,
                         self.mask if mask is None else mask,
                         self.camera if camera is None else camera)

    def grad(self, params, mask=None):
        return self._grad(params, self.video, self.points,
                          self.mask if mask is None else mask, self.camera)


@pytest.fixture(scope="module")
def harness():
    return Harness()


def _random_params(params, seed=1):
    """Every parameter perturbed (numpy noise), so zero-initialised projections are not zero."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype),
                        params)


def _frame(v, f):
    return v[:, f * HW:(f + 1) * HW]


def test_block_shapes_and_zero_init(harness):
    h = harness
    out_v, out_p = h.run(h.params)
    chex.assert_shape(out_v, h.video.shape)
    chex.assert_shape(out_p, (BATCH, GRID[0], h.points.shape[2], WIDTH))
    chex.assert_tree_all_finite((out_v, out_p))
    np.testing.assert_array_equal(out_v, h.video)             # video stream unchanged at init
    assert float(jnp.abs(out_p).max()) > 0.0
    assert h.params["plucker"]["proj"]["kernel"].shape == (6, WIDTH)
    # and the gradient reaches the zero-initialised output projections
    grads = h.grad(h.params)
    for path in (("video_from_points", "to_out"), ("ff_video", "net_2"), ("plucker", "proj")):
        assert float(jnp.abs(grads[path[0]][path[1]]["kernel"]).max()) > 0.0, path


def test_both_directions_and_frame_mask(harness):
    h = harness
    params = _random_params(h.params)
    out_v, out_p = h.run(params)
    # 3-D → video: moving the points of frame 1 changes frame 1's video tokens only.
    v2, p2 = h.run(params, points=h.points.at[:, 1].add(150.0))
    assert float(jnp.abs(_frame(v2, 1) - _frame(out_v, 1)).max()) > 1e-3
    for f in (0, 2):
        np.testing.assert_allclose(_frame(v2, f), _frame(out_v, f), atol=1e-6)
        np.testing.assert_allclose(p2[:, f], out_p[:, f], atol=1e-6)
    # video → 3-D: changing frame 2's video tokens changes frame 2's point tokens only.
    v3, p3 = h.run(params, video=h.video.at[:, 2 * HW:].add(_randn((BATCH, HW, WIDTH), 9)))
    assert float(jnp.abs(p3[:, 2] - out_p[:, 2]).max()) > 1e-3
    np.testing.assert_allclose(p3[:, :2], out_p[:, :2], atol=1e-6)
    np.testing.assert_allclose(v3[:, :2 * HW], out_v[:, :2 * HW], atol=1e-6)


def test_point_mask_drops_the_condition(harness):
    h = harness
    params = _random_params(h.params)
    params["plucker"]["proj"]["kernel"] = jnp.zeros_like(params["plucker"]["proj"]["kernel"])
    params["plucker"]["proj"]["bias"] = jnp.zeros_like(params["plucker"]["proj"]["bias"])
    mask = h.mask.at[:, 0].set(False)
    out_v, _ = h.run(params, mask=mask)
    np.testing.assert_array_equal(_frame(out_v, 0), _frame(h.video, 0))  # no points: unchanged
    assert float(jnp.abs(out_v[:, HW:] - h.video[:, HW:]).max()) > 1e-3
    chex.assert_tree_all_finite(h.grad(params, mask))
    # masked points do not influence anything
    partial = mask.at[:, 1, :4].set(False)
    np.testing.assert_allclose(h.run(params, mask=partial)[0],
                               h.run(params, points=h.points.at[:, 1, :4].add(500.0),
                                     mask=partial)[0], atol=1e-6)


def test_plucker_embedding_and_camera_argument(harness):
    h = harness
    cam = C.Camera.from_matrices(C.default_intrinsics(IMAGE), IMAGE, _rotation(4),
                                 np.array([10.0, 20.0, 30.0]))
    np.testing.assert_array_equal(h.run(h.params, camera=cam)[0], h.video)   # zero-initialised
    params = _random_params(h.params)
    moved = h.run(params, camera=cam)
    assert float(jnp.abs(moved[0] - h.run(params)[0]).max()) > 1e-3     # the camera matters
    # the default camera is what the block assumes without one (grid aspect = image aspect)
    out = jax.jit(lambda p: h.block.apply({"params": p}, h.video, GRID, h.points,
                                          point_mask=h.mask))(params)
    chex.assert_trees_all_close(out, h.run(params), rtol=1e-5, atol=1e-4)


def test_config_and_carried_point_tokens():
    cfg = I.isa_config()
    assert (cfg.every, cfg.points_per_bone, cfg.fov_degrees, cfg.plucker) == (2, 0, 55.0, False)
    cfg.update(mlp_hidden=16, num_frequencies=2, points_per_bone=1, frame_rule="last")
    motion = _randn((BATCH, 9, 24, 3), 10, 300.0) + jnp.array([0.0, 0.0, 3000.0])
    points = I.latent_frame_points(motion, cfg.points_per_bone, cfg.frame_rule)
    chex.assert_shape(points, (BATCH, 3, 47, 3))
    embed = I.PointEmbed.from_config(cfg, WIDTH)
    tokens, _ = jax.jit(embed.init_with_output)(jax.random.PRNGKey(1), points)
    block = I.isa_block(cfg, WIDTH, HEADS)
    video = _randn((BATCH, math.prod(GRID), WIDTH), 11)
    init = jax.jit(lambda key: block.init(key, video, GRID, points, point_tokens=tokens))
    variables = nn.meta.unbox(init(jax.random.PRNGKey(2)))
    assert "point_embed" not in variables["params"]            # tokens came from outside
    assert "plucker" not in variables["params"]
    with pytest.raises(ValueError):
        block.init(jax.random.PRNGKey(2), video[:, :-1], GRID, points, point_tokens=tokens)
