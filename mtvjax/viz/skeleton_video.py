"""Skeleton videos of SMPL joint motions: projection, drawing, side-by-side panels, video I/O.

Motions are `[frames, 24, 3]` joint coordinates in the camera space of NLF output (x right,
y down, z depth, millimetres). Drawing is done with Pillow's `ImageDraw` on uint8 RGB arrays;
`.mp4` files are written as H.264 with PyAV, `.gif` files with imageio/Pillow.
"""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mtvjax.data.skeleton import BONES, NUM_JOINTS, SIDE

# The field of view NLF assumes when no intrinsics are given, over the longer image side.
DEFAULT_FOV_DEGREES = 55.0

# Bone colours by side of the child joint (RGB): right, centre, left.
RIGHT_COLOUR = (235, 64, 52)
CENTRE_COLOUR = (245, 200, 40)
LEFT_COLOUR = (40, 120, 245)
JOINT_COLOUR = (245, 245, 245)
EMPTY_BACKGROUND = (24, 24, 28)
SIDE_COLOURS = {-1: RIGHT_COLOUR, 0: CENTRE_COLOUR, 1: LEFT_COLOUR}

# Points closer to the camera plane than this (mm) have no projection.
_MIN_DEPTH_MM = 1.0
# Pixel coordinates are clipped to this magnitude before drawing.
_MAX_PIXEL = 1e6


def default_focal(width: int, height: int, fov_degrees: float = DEFAULT_FOV_DEGREES) -> float:
    """Focal length in pixels that spans `fov_degrees` over the longer image side."""
    return max(width, height) / 2.0 / math.tan(math.radians(fov_degrees) / 2.0)


def project_to_image(joints_mm, width: int, height: int, focal: float | None = None,
                     principal_point: tuple[float, float] | None = None) -> np.ndarray:
    """Pinhole projection of camera-space points to pixel coordinates.

    Args:
      joints_mm: `[..., 3]` points (x right, y down, z depth; any length unit).
      width, height: image size in pixels.
      focal: focal length in pixels; default: a 55 degree field of view over the longer side,
        as NLF assumes.
      principal_point: `(cx, cy)`; default the image centre `(width / 2, height / 2)`.
    Returns:
      `[..., 2]` float64 pixel coordinates `(u, v)` in the continuous convention where pixel
      `(i, j)` covers `[i, i + 1) x [j, j + 1)`, so the optical axis lands at the image centre
      and a point on the edge of the field of view on the border. Points at or behind the camera
      plane (z < 1) are NaN.
    """
    points = np.asarray(joints_mm, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"expected [..., 3] points, got shape {points.shape}")
    f = default_focal(width, height) if focal is None else float(focal)
    cx, cy = (width / 2.0, height / 2.0) if principal_point is None else principal_point
    z = points[..., 2]
    valid = z >= _MIN_DEPTH_MM
    safe_z = np.where(valid, z, 1.0)
    uv = np.stack([f * points[..., 0] / safe_z + cx, f * points[..., 1] / safe_z + cy], axis=-1)
    uv[~valid] = np.nan
    return uv


def _bone_order(depth) -> list[tuple[int, int]]:
    """Bones from far to near, so nearer limbs are drawn over farther ones."""
    if depth is None:
        return list(BONES)
    depth = np.asarray(depth, dtype=np.float64)
    mean_depth = [np.nan_to_num((depth[a] + depth[b]) / 2.0, nan=-np.inf) for a, b in BONES]
    return [BONES[i] for i in np.argsort(mean_depth, kind="stable")[::-1]]


def _default_thickness(width: int, height: int) -> int:
    return max(2, int(round(min(width, height) / 90.0)))


def _draw_on(draw: ImageDraw.ImageDraw, joints_2d: np.ndarray, depth=None,
             thickness: int = 3, joint_radius: float | None = None) -> None:
    """Draws bones and joint dots of one skeleton with an existing `ImageDraw`."""
    pts = np.clip(np.asarray(joints_2d, dtype=np.float64), -_MAX_PIXEL, _MAX_PIXEL)
    finite = np.all(np.isfinite(pts), axis=-1)
    for parent, child in _bone_order(depth):
        if finite[parent] and finite[child]:
            draw.line([tuple(pts[parent]), tuple(pts[child])],
                      fill=SIDE_COLOURS[int(SIDE[child])], width=thickness)
    r = thickness * 0.75 if joint_radius is None else joint_radius
    if r > 0:
        for j in np.flatnonzero(finite):
            x, y = pts[j]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=JOINT_COLOUR)


def draw_skeleton(canvas_rgb_uint8: np.ndarray, joints_2d, depth=None,
                  thickness: int | None = None, joint_radius: float | None = None) -> np.ndarray:
    """Draws the SMPL skeleton over an image.

    Bones of the kinematic tree (`skeleton.BONES`) are coloured by the side of their child joint:
    `RIGHT_COLOUR`, `CENTRE_COLOUR`, `LEFT_COLOUR` (the subject's right and left); joints are
    `JOINT_COLOUR` dots drawn over the bones.

    Args:
      canvas_rgb_uint8: `[H, W, 3]` uint8 image; not modified.
      joints_2d: `[24, 2]` pixel coordinates (as from `project_to_image`); joints with non-finite
        coordinates and their bones are skipped.
      depth: optional `[24]` joint depths; bones are then drawn far to near.
      thickness: bone width in pixels; default scales with the image size.
      joint_radius: joint dot radius in pixels; default 0.75 x thickness, 0 draws no dots.
    Returns:
      A new `[H, W, 3]` uint8 image.
    """
    canvas = np.asarray(canvas_rgb_uint8)
    if canvas.ndim != 3 or canvas.shape[-1] != 3 or canvas.dtype != np.uint8:
        raise ValueError(f"canvas must be [H, W, 3] uint8, got {canvas.shape} {canvas.dtype}")
    joints_2d = np.asarray(joints_2d)
    if joints_2d.shape != (NUM_JOINTS, 2):
        raise ValueError(f"joints_2d must be [{NUM_JOINTS}, 2], got {joints_2d.shape}")
    image = Image.fromarray(canvas)
    height, width = canvas.shape[:2]
    if thickness is None:
        thickness = _default_thickness(width, height)
    _draw_on(ImageDraw.Draw(image), joints_2d, depth, thickness, joint_radius)
    return np.asarray(image)


# ---------------------------------------------------------------------------------------------
# Panels


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _framing_camera(motions: Sequence[np.ndarray], width: int, height: int, top: int,
                    margin: float = 0.06):
    """A camera (projection function) whose view fits every motion into the panel.

    With positive depths everywhere this is the original pinhole camera, zoomed and shifted (a
    crop of the image plane): the bounding box of x/z, y/z over all frames and joints is fitted
    into the panel below a `top` title band, aspect kept. Otherwise (e.g. root-relative
    coordinates) x, y are fitted the same way with an orthographic view.
    """
    points = np.concatenate([np.asarray(m, np.float64).reshape(-1, 3) for m in motions])
    points = points[np.all(np.isfinite(points), axis=-1)]
    perspective = points.size > 0 and bool(np.all(points[:, 2] >= _MIN_DEPTH_MM))
    if points.size == 0:
        plane = np.zeros((1, 2))
    elif perspective:
        plane = points[:, :2] / points[:, 2:]
    else:
        plane = points[:, :2]
    lo, hi = plane.min(axis=0), plane.max(axis=0)
    pad = margin * min(width, height)
    box_w, box_h = max(width - 2 * pad, 1.0), max(height - top - 2 * pad, 1.0)
    extent = hi - lo
    scales = [box_w / extent[0] if extent[0] > 0 else np.inf,
              box_h / extent[1] if extent[1] > 0 else np.inf]
    scale = min(scales)
    if not np.isfinite(scale):  # a single point (or nothing): any scale will do
        scale = default_focal(width, height) if perspective else 1.0
    centre = (lo + hi) / 2.0
    cx = width / 2.0 - scale * centre[0]
    cy = top + pad + box_h / 2.0 - scale * centre[1]

    def camera(joints: np.ndarray) -> np.ndarray:
        if perspective:
            return project_to_image(joints, width, height, focal=scale, principal_point=(cx, cy))
        joints = np.asarray(joints, np.float64)
        return np.stack([scale * joints[..., 0] + cx, scale * joints[..., 1] + cy], axis=-1)

    return camera


def _fit_background(frames: np.ndarray, width: int, height: int):
    """Letterboxes video frames into `width x height`; returns them and the pixel transform."""
    src_h, src_w = frames.shape[1:3]
    scale = min(width / src_w, height / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    off_x, off_y = (width - new_w) // 2, (height - new_h) // 2
    if (new_w, new_h) == (src_w, src_h) and (off_x, off_y) == (0, 0):
        return frames, (1.0, 1.0, 0.0, 0.0)
    out = np.zeros((len(frames), height, width, 3), np.uint8)
    for t, frame in enumerate(frames):
        resized = Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR)
        out[t, off_y:off_y + new_h, off_x:off_x + new_w] = np.asarray(resized)
    return out, (new_w / src_w, new_h / src_h, float(off_x), float(off_y))


def render_motion_frames(motions: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                         size: tuple[int, int] | None = (256, 256), background_frames=None,
                         shared_camera: bool = True) -> np.ndarray:
    """Renders motions side by side into an array of frames (see `render_motion_panels`).

    Returns:
      `[frames, H, W, 3]` uint8, `W` the sum of the panel widths. Dimensions are not padded to
      even numbers here.
    """
    motions = [np.asarray(m, dtype=np.float64) for m in motions]
    if not motions:
        raise ValueError("no motions to render")
    for i, m in enumerate(motions):
        if m.ndim != 3 or m.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(f"motion {i} must be [frames, {NUM_JOINTS}, 3], got {m.shape}")
    if titles is not None and len(titles) != len(motions):
        raise ValueError(f"{len(titles)} titles for {len(motions)} motions")

    backgrounds = None
    if background_frames is not None:
        if isinstance(background_frames, np.ndarray):
            backgrounds = [background_frames] * len(motions)
        else:
            backgrounds = list(background_frames)
            if len(backgrounds) != len(motions):
                raise ValueError(f"{len(backgrounds)} background videos for {len(motions)} motions")
        for b in backgrounds:
            if b is not None and (b.ndim != 4 or b.shape[-1] != 3 or b.dtype != np.uint8):
                raise ValueError(f"background frames must be [frames, H, W, 3] uint8, got "
                                 f"{b.shape} {b.dtype}")
        if all(b is None for b in backgrounds):
            backgrounds = None

    lengths = [len(m) for m in motions]
    if backgrounds is not None:
        lengths += [len(b) for b in backgrounds if b is not None]
    num_frames = min(lengths)
    if num_frames == 0:
        raise ValueError("nothing to render: a motion or background video has no frames")

    if size is None:
        first_bg = next((b for b in backgrounds if b is not None), None) if backgrounds else None
        width, height = (first_bg.shape[2], first_bg.shape[1]) if first_bg is not None else (256, 256)
    else:
        width, height = int(size[0]), int(size[1])
    thickness = _default_thickness(width, height)
    font_size = max(10, height // 18)
    font = _font(font_size)
    title_band = font_size + 8 if titles else 0

    motions = [m[:num_frames] for m in motions]
    # One projection per panel: the video's camera under a background, else a framing camera.
    cameras = []
    framing = _framing_camera(motions, width, height, title_band) if shared_camera else None
    fitted = []
    for i, m in enumerate(motions):
        bg = backgrounds[i] if backgrounds is not None else None
        if bg is not None:
            bg_fit, (sx, sy, ox, oy) = _fit_background(bg[:num_frames], width, height)
            src_w, src_h = bg.shape[2], bg.shape[1]
            fitted.append(bg_fit)
            cameras.append(lambda j, sx=sx, sy=sy, ox=ox, oy=oy, w=src_w, h=src_h:
                           project_to_image(j, w, h) * np.array([sx, sy]) + np.array([ox, oy]))
        else:
            fitted.append(None)
            cameras.append(framing if framing is not None
                           else _framing_camera([m], width, height, title_band))
    projected = [cam(m) for cam, m in zip(cameras, motions)]

    out = np.empty((num_frames, height, width * len(motions), 3), np.uint8)
    for t in range(num_frames):
        for i, m in enumerate(motions):
            if fitted[i] is not None:
                panel = Image.fromarray(fitted[i][t])
            else:
                panel = Image.new("RGB", (width, height), EMPTY_BACKGROUND)
            draw = ImageDraw.Draw(panel)
            _draw_on(draw, projected[i][t], m[t, :, 2], thickness)
            if titles:
                draw.text((width / 2, 4), str(titles[i]), fill=(255, 255, 255), font=font,
                          anchor="ma", stroke_width=2, stroke_fill=(0, 0, 0))
            out[t, :, i * width:(i + 1) * width] = np.asarray(panel)
    return out


def _pad_even(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import av

    frames = _pad_even(frames)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)


def render_motion_panels(motions: Sequence[np.ndarray], out_path, titles: Sequence[str] | None = None,
                         fps: float = 25, size: tuple[int, int] | None = (256, 256),
                         background_frames=None, shared_camera: bool = True) -> Path:
    """Writes a video of motions side by side, one skeleton panel each.

    Args:
      motions: list of `[frames, 24, 3]` camera-space joint motions (e.g. input and
        reconstruction). Frame counts may differ: the video has as many frames as the shortest
        motion (or background video, if shorter).
      out_path: `.mp4` (H.264, yuv420p; odd frame sizes are padded to even) or `.gif`. In a GIF,
        Pillow merges identical consecutive frames into one longer frame.
      titles: optional one title per panel, drawn at the top of it.
      fps: frames per second.
      size: `(width, height)` of each panel. `None`: the background video's size, or 256 x 256.
      background_frames: optional `[frames, H, W, 3]` uint8 video (e.g. the driving video) drawn
        under every panel, or a list with one such array (or None) per panel. A panel with a
        background projects with that video's camera (`project_to_image` with its width and
        height, NLF's default intrinsics), the video letterboxed into the panel size.
      shared_camera: panels without a background share one camera that frames all motions, so
        offsets between them stay visible; False frames each motion by its own extent.
        Either way the camera is fixed over time and fills the panel with the extent of the
        rendered frames (the motion keeps its own translation across the image).
    Returns:
      `out_path` as a `Path`.
    """
    _check_output(out_path, fps)     # before the (slow) rendering
    frames = render_motion_frames(motions, titles, size, background_frames, shared_camera)
    return write_video(frames, out_path, fps)


def _check_output(out_path, fps: float) -> Path:
    path = Path(out_path)
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"cannot write {str(path)!r}: unknown video suffix {path.suffix!r} "
                         "(use .mp4 or .gif)")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return path


def write_video(frames: np.ndarray, out_path, fps: float) -> Path:
    """Writes uint8 `[frames, H, W, 3]` as `.mp4` (H.264, yuv420p, odd sizes padded to even) or
    `.gif`; creates the parent folder. Returns the path."""
    path = _check_output(out_path, fps)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [frames, H, W, 3], got {frames.dtype} "
                         f"{frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4":
        _write_mp4(frames, path, fps)
    else:
        _write_gif(frames, path, fps)
    return path


def read_video_frames(path, max_frames: int | None = None,
                      size: tuple[int, int] | None = None) -> np.ndarray:
    """Decodes the first video stream of a file with PyAV.

    Args:
      path: video file.
      max_frames: decode at most this many frames from the start.
      size: optional `(width, height)` to resize every frame to.
    Returns:
      `[frames, H, W, 3]` uint8 RGB.
    Raises:
      FileNotFoundError: no such file. ValueError: not a decodable video, or no frames.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    if max_frames is not None and max_frames <= 0:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    frames = []
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise ValueError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if size is not None:
                    frame = frame.reformat(width=int(size[0]), height=int(size[1]))
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot decode video {str(path)!r}: {err}") from err
    if not frames:
        raise ValueError(f"no frames decoded from {str(path)!r}")
    return np.stack(frames)
