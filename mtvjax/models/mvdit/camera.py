"""Pinhole cameras for interspatial attention: projection to NDC, latent-pixel centres, Plücker rays.

Conventions (those of the NLF-estimated data, see `mtvjax/data/skeleton.py`):

* 3-D points are in **millimetres**; camera space has x right, y down, z forward (depth).
* A `Camera` holds intrinsics `K [..., 3, 3]` in pixels, extrinsics `R [..., 3, 3]`, `t [..., 3]`
  (mm) mapping world to camera (`X_cam = R·X_world + t`), and the image size (height, width) in
  pixels that K refers to. The leading `...` of the arrays broadcast against the leading axes of
  the points, aligned from the left: `[3, 3]` (one camera), `[B, 3, 3]` (per sample),
  `[B, F, 3, 3]` (per sample and latent frame, a moving camera).
* **Default camera** (`Camera.default`): what NLF assumes when it has no calibration, a pinhole
  with a 55° field of view on the longer image side, principal point at the image centre, no
  rotation or translation (the points already are in camera space). The focal length is
  `f = (max(H, W) / 2) / tan(fov / 2)` pixels, so only the aspect ratio of `image_size` matters.
* **NDC**: `x = 2u/W − 1`, `y = 2v/H − 1` for pixel coordinates (u, v) with the image spanning
  `[0, W] × [0, H]` (pixel centres at half-integers): the image edges are ±1 and, with the default
  camera, so are the edges of the field of view on the longer side. The third coordinate is a
  normalised depth (`depth_coordinate`): `"log"` (default) ln(z / 1 m), `"metres"` z / 1 m, or
  `"none"` 0. Video tokens sit at depth 0 (`"log"`: on the plane 1 m in front of the camera).
* **Latent pixel centres**: token (i, j) of an h × w token grid covers the image cell
  `[j·W/w, (j+1)·W/w] × [i·H/h, (i+1)·H/h]`; its centre in NDC is `((2j+1)/w − 1, (2i+1)/h − 1)`,
  the same for any VAE / patch stride as long as they cover the image exactly.
* **Plücker rays**: per pixel, the world-space unit direction `d = normalise(Rᵀ·K⁻¹·(u, v, 1))`
  and the moment `m = o × d` with `o = −Rᵀ·t` the camera centre in metres; 6 channels (d, m).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax.numpy as jnp

DEFAULT_FOV_DEGREES = 55.0
DEPTH_MODES = ("log", "metres", "none")
MIN_DEPTH_MM = 10.0     # points closer than 1 cm (or behind the camera) are clamped to it


def default_intrinsics(image_size: Sequence[int], fov_degrees: float = DEFAULT_FOV_DEGREES):
    """`[3, 3]` K of the default camera: `fov_degrees` over the longer side, centred principal
    point, square pixels; `image_size` is (height, width) in pixels."""
    height, width = float(image_size[0]), float(image_size[1])
    focal = 0.5 * max(height, width) / math.tan(math.radians(fov_degrees) / 2.0)
    return jnp.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]],
                     jnp.float32)


class Camera(flax.struct.PyTreeNode):
    """A pinhole camera (module docstring for the conventions). `image_size` is static."""

    intrinsics: jnp.ndarray                  # [..., 3, 3] pixels
    rotation: jnp.ndarray                    # [..., 3, 3] world -> camera
    translation: jnp.ndarray                 # [..., 3] millimetres
    image_size: tuple = flax.struct.field(pytree_node=False, default=(1, 1))  # (H, W) pixels

    @classmethod
    def default(cls, image_size: Sequence[int], fov_degrees: float = DEFAULT_FOV_DEGREES):
        """The NLF default: `fov_degrees` on the longer side, centred, identity extrinsics."""
        return cls(default_intrinsics(image_size, fov_degrees), jnp.eye(3, dtype=jnp.float32),
                   jnp.zeros(3, jnp.float32), tuple(int(s) for s in image_size))

    @classmethod
    def from_matrices(cls, intrinsics, image_size: Sequence[int], rotation=None,
                      translation=None):
        """Explicit K (pixels) and optional extrinsics [R | t] (t in millimetres)."""
        intrinsics = jnp.asarray(intrinsics, jnp.float32)
        rotation = (jnp.eye(3, dtype=jnp.float32) if rotation is None
                    else jnp.asarray(rotation, jnp.float32))
        translation = (jnp.zeros(3, jnp.float32) if translation is None
                       else jnp.asarray(translation, jnp.float32))
        return cls(intrinsics, rotation, translation, tuple(int(s) for s in image_size))


def align_leading(x, core_ndim: int, lead_ndim: int):
    """`x [...a, core]` with singleton axes appended to `...a` so it has `lead_ndim` leading axes
    (left-aligned broadcasting of per-sample / per-frame camera arrays against point arrays)."""
    extra = lead_ndim - (x.ndim - core_ndim)
    if extra < 0:
        raise ValueError(f"camera array {x.shape} has more leading axes than the points "
                         f"({lead_ndim})")
    core = x.shape[x.ndim - core_ndim:]
    return x.reshape(x.shape[:x.ndim - core_ndim] + (1,) * extra + core)


def depth_coordinate(z_mm, mode: str = "log"):
    """Normalised depth of camera-space z (mm): "log" ln(z / 1 m), "metres" z / 1 m, "none" 0."""
    if mode not in DEPTH_MODES:
        raise ValueError(f"unknown depth mode {mode!r}; expected one of {DEPTH_MODES}")
    z_m = jnp.maximum(z_mm, MIN_DEPTH_MM) / 1000.0
    if mode == "log":
        return jnp.log(z_m)
    if mode == "metres":
        return z_m
    return jnp.zeros_like(z_m)


def to_camera(points_mm, camera: Camera):
    """World points `[..., 3]` (mm) → camera space (mm): `R·X + t`."""
    lead = points_mm.ndim - 1
    rotation = align_leading(camera.rotation, 2, lead)
    translation = align_leading(camera.translation, 1, lead)
    return jnp.einsum("...ij,...j->...i", rotation, points_mm) + translation


def project_to_ndc(points_mm, camera: Camera, depth: str = "log"):
    """Points `[..., 3]` (mm, world = camera space for the default camera) → `[..., 3]`
    (x_ndc, y_ndc, normalised depth). Points closer than 1 cm are clamped to 1 cm in depth."""
    points_mm = jnp.asarray(points_mm, jnp.float32)
    cam = to_camera(points_mm, camera)
    z = jnp.maximum(cam[..., 2], MIN_DEPTH_MM)
    lead = points_mm.ndim - 1
    k = align_leading(camera.intrinsics, 2, lead)
    u = k[..., 0, 0] * cam[..., 0] / z + k[..., 0, 1] * cam[..., 1] / z + k[..., 0, 2]
    v = k[..., 1, 1] * cam[..., 1] / z + k[..., 1, 2]
    height, width = camera.image_size
    return jnp.stack([2.0 * u / width - 1.0, 2.0 * v / height - 1.0,
                      depth_coordinate(cam[..., 2], depth)], axis=-1)


def grid_ndc(grid_h: int, grid_w: int):
    """`[h·w, 2]` NDC (x, y) of the token-cell centres of an h × w grid, row-major (i·w + j)."""
    y = (2.0 * jnp.arange(grid_h, dtype=jnp.float32) + 1.0) / grid_h - 1.0
    x = (2.0 * jnp.arange(grid_w, dtype=jnp.float32) + 1.0) / grid_w - 1.0
    yy, xx = jnp.meshgrid(y, x, indexing="ij")
    return jnp.stack([xx.reshape(-1), yy.reshape(-1)], axis=-1)


def video_token_ndc(grid: Sequence[int]):
    """`[F·h·w, 3]` (x_ndc, y_ndc, depth 0) of video tokens s = f·h·w + i·w + j."""
    frames, grid_h, grid_w = grid
    xy = jnp.tile(grid_ndc(grid_h, grid_w), (frames, 1))
    return jnp.concatenate([xy, jnp.zeros((xy.shape[0], 1), jnp.float32)], axis=-1)


def plucker_rays(camera: Camera, grid_h: int, grid_w: int):
    """`[..., h·w, 6]` Plücker rays (unit world direction d, moment o × d with o in metres) through
    the pixel centres of an h × w token grid; `...` are the camera arrays' leading axes."""
    height, width = camera.image_size
    ndc = grid_ndc(grid_h, grid_w)
    pixels = jnp.stack([(ndc[:, 0] + 1.0) * width / 2.0, (ndc[:, 1] + 1.0) * height / 2.0,
                        jnp.ones(ndc.shape[0], jnp.float32)], axis=-1)         # [h·w, 3]
    k_inv = jnp.linalg.inv(camera.intrinsics)                                   # [..., 3, 3]
    rays_cam = jnp.einsum("...ij,pj->...pi", k_inv, pixels)
    rays = jnp.einsum("...ji,...pj->...pi", camera.rotation, rays_cam)         # Rᵀ · ray
    d = rays / jnp.linalg.norm(rays, axis=-1, keepdims=True)
    origin = -jnp.einsum("...ji,...j->...i", camera.rotation, camera.translation) / 1000.0
    m = jnp.cross(jnp.broadcast_to(origin[..., None, :], d.shape), d)
    return jnp.concatenate([d, m], axis=-1)
