"""Tests for skeleton videos (projection, drawing, mp4/gif writing, video reading) and the codebook plot."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from mtvjax.data.skeleton import JOINT_NAMES, NEUTRAL_REST_JOINTS, to_camera_mm
from mtvjax.viz.codebook_plot import plot_code_usage
from mtvjax.viz.skeleton_video import (CENTRE_COLOUR, EMPTY_BACKGROUND, LEFT_COLOUR, RIGHT_COLOUR,
                                       draw_skeleton, project_to_image, read_video_frames,
                                       render_motion_frames, render_motion_panels)

J = {name: i for i, name in enumerate(JOINT_NAMES)}


def _rest_pose_mm(distance_m: float = 3.0) -> np.ndarray:
    """The SMPL rest pose standing upright, facing a camera `distance_m` away; `[24, 3]` mm."""
    return to_camera_mm(NEUTRAL_REST_JOINTS, distance_m)


def _static_motion(frames: int = 8) -> np.ndarray:
    return np.repeat(_rest_pose_mm()[None], frames, axis=0)


def _moving_motion(frames: int = 8) -> np.ndarray:
    """The rest pose walking sideways 100 mm per frame."""
    shift = np.zeros((frames, 1, 3), np.float32)
    shift[:, 0, 0] = 100.0 * np.arange(frames)
    return _static_motion(frames) + shift


def _decode_mp4(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _mean_abs_diff(a, b) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


# --- projection -------------------------------------------------------------------------------

def test_optical_axis_projects_to_image_centre():
    uv = project_to_image(np.array([[0.0, 0.0, 1500.0], [0.0, 0.0, 4000.0]]), 640, 480)
    np.testing.assert_allclose(uv, [[320.0, 240.0], [320.0, 240.0]])


@pytest.mark.parametrize("width,height", [(640, 480), (480, 640)])
def test_fov_edge_projects_to_border_of_longer_side(width, height):
    z = 2000.0
    edge = z * math.tan(math.radians(55.0) / 2)
    if width >= height:  # landscape: the 55 degree field of view spans the width
        uv = project_to_image(np.array([[edge, 0.0, z], [-edge, 0.0, z]]), width, height)
        np.testing.assert_allclose(uv, [[width, height / 2], [0.0, height / 2]], atol=1e-9)
    else:  # portrait: it spans the height; y grows downwards
        uv = project_to_image(np.array([[0.0, edge, z], [0.0, -edge, z]]), width, height)
        np.testing.assert_allclose(uv, [[width / 2, height], [width / 2, 0.0]], atol=1e-9)


def test_projection_explicit_focal_and_points_behind_camera():
    uv = project_to_image(np.array([[100.0, -50.0, 1000.0], [0.0, 0.0, -5.0]]), 200, 100, focal=500)
    np.testing.assert_allclose(uv[0], [100 + 50.0, 50 - 25.0])
    assert np.all(np.isnan(uv[1]))


def test_upright_person_projects_head_above_feet():
    uv = project_to_image(_rest_pose_mm(), 512, 512)
    assert uv[J["head"], 1] < uv[J["pelvis"], 1] < uv[J["left_ankle"], 1]
    # Facing the camera, the subject's left hand is on the image's right.
    assert uv[J["left_hand"], 0] > uv[J["right_hand"], 0]


# --- drawing ----------------------------------------------------------------------------------

def _shin_midpoints(uv):
    left = (uv[J["left_knee"]] + uv[J["left_ankle"]]) / 2
    right = (uv[J["right_knee"]] + uv[J["right_ankle"]]) / 2
    spine = (uv[J["spine1"]] + uv[J["spine2"]]) / 2
    return [tuple(np.floor(p).astype(int)) for p in (left, right, spine)]


def test_draw_skeleton_colours_sides_differently():
    size = 512
    uv = project_to_image(_rest_pose_mm(2.0), size, size)
    canvas = np.zeros((size, size, 3), np.uint8)
    drawn = draw_skeleton(canvas, uv, thickness=5, joint_radius=2)
    assert not canvas.any(), "the input canvas must not be modified"
    (lx, ly), (rx, ry), (cx, cy) = _shin_midpoints(uv)
    assert tuple(drawn[ly, lx]) == LEFT_COLOUR
    assert tuple(drawn[ry, rx]) == RIGHT_COLOUR
    assert tuple(drawn[cy, cx]) == CENTRE_COLOUR
    assert len({LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR}) == 3
    # Nothing is drawn far from the body (the top-left corner), and non-finite joints are skipped.
    assert not drawn[:20, :20].any()
    uv_missing = uv.copy()
    uv_missing[J["left_ankle"]] = np.nan
    assert tuple(draw_skeleton(canvas, uv_missing, thickness=5, joint_radius=2)[ly, lx]) == (0, 0, 0)


# --- panels -----------------------------------------------------------------------------------

def test_static_motion_gives_identical_frames_moving_motion_different_frames():
    static = render_motion_frames([_static_motion()], size=(96, 128))
    moving = render_motion_frames([_moving_motion()], size=(96, 128))
    assert static.shape == moving.shape == (8, 128, 96, 3)
    assert all(np.array_equal(static[0], f) for f in static[1:])
    assert all(not np.array_equal(a, b) for a, b in zip(moving[:-1], moving[1:]))
    # The framing camera fits the whole motion: something is drawn in every frame.
    assert all((f != EMPTY_BACKGROUND).any(axis=-1).sum() > 50 for f in moving)


def test_framing_camera_fills_panel_and_keeps_person_upright():
    frames = render_motion_frames([_static_motion(1)], size=(128, 128))
    drawn = np.argwhere((frames[0] != EMPTY_BACKGROUND).any(axis=-1))
    rows, cols = drawn[:, 0], drawn[:, 1]
    assert rows.max() - rows.min() > 0.8 * 128  # the tall body fills the panel's height
    # Left side (blue) appears on the image's right half, right side (red) on its left half.
    blue = np.argwhere(np.all(frames[0] == LEFT_COLOUR, axis=-1))[:, 1].mean()
    red = np.argwhere(np.all(frames[0] == RIGHT_COLOUR, axis=-1))[:, 1].mean()
    assert blue > 64 > red
    # Head (centre colour) is near the top, not the bottom.
    yellow_rows = np.argwhere(np.all(frames[0] == CENTRE_COLOUR, axis=-1))[:, 0]
    assert yellow_rows.mean() < 64


def test_panels_side_by_side_shortest_length_and_titles():
    a, b = _moving_motion(10), _moving_motion(7)
    plain = render_motion_frames([a, b], size=(64, 80))
    assert plain.shape == (7, 80, 128, 3)
    titled = render_motion_frames([a, b], titles=["input", "recon"], size=(64, 80))
    band = slice(0, 12)
    assert (titled[0, band, :64] != plain[0, band, :64]).any()   # title drawn in panel 1
    assert (titled[0, band, 64:] != plain[0, band, 64:]).any()   # and in panel 2
    with pytest.raises(ValueError, match="titles"):
        render_motion_frames([a, b], titles=["only one"])


def test_mp4_written_and_decodes_with_right_frames(tmp_path):
    out = render_motion_panels([_moving_motion(10), _moving_motion(10)], tmp_path / "m.mp4",
                               titles=["in", "out"], fps=25, size=(63, 65))
    assert out == tmp_path / "m.mp4" and out.stat().st_size > 0
    frames = _decode_mp4(out)
    assert frames.shape == (10, 66, 126, 3)  # 2 x 63 wide, padded to even dimensions
    assert all(_mean_abs_diff(a, b) > 0.5 for a, b in zip(frames[:-1], frames[1:]))
    static = _decode_mp4(render_motion_panels([_static_motion(6)], tmp_path / "s.mp4", size=(64, 64)))
    assert static.shape == (6, 64, 64, 3)
    assert all(_mean_abs_diff(static[0], f) < 0.5 for f in static[1:])
    # The H.264 round trip keeps the side colours recognisable.
    reference = render_motion_frames([_static_motion(1)], size=(64, 64))[0]
    assert _mean_abs_diff(reference, static[0]) < 6


def test_gif_written_and_reads_back(tmp_path):
    import imageio.v3 as iio

    out = render_motion_panels([_moving_motion(5)], tmp_path / "m.gif", size=(48, 64), fps=10)
    frames = iio.imread(out, index=None)
    assert frames.shape[:3] == (5, 64, 48)
    assert all(not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:]))


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "motion.avi"
    with pytest.raises(ValueError, match="motion.avi"):
        render_motion_panels([_static_motion(2)], path)
    assert not path.exists()


# --- video reading and background -------------------------------------------------------------

def test_read_video_frames_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        read_video_frames(tmp_path / "nothere.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 20)
    with pytest.raises(ValueError, match="junk.mp4"):
        read_video_frames(junk)


def test_read_video_frames_roundtrip_and_resize(tmp_path):
    path = render_motion_panels([_moving_motion(6)], tmp_path / "v.mp4", size=(64, 48))
    assert read_video_frames(path).shape == (6, 48, 64, 3)
    small = read_video_frames(path, max_frames=3, size=(32, 24))
    assert small.shape == (3, 24, 32, 3) and small.dtype == np.uint8


def test_background_video_under_skeleton(mtvcrafter_sample, tmp_path):
    from mtvjax.data.safe_pickle import load_pickle

    clip = load_pickle(mtvcrafter_sample / "sampled_data.pkl")[0]
    video = read_video_frames(mtvcrafter_sample / clip["video_path"], max_frames=4)
    height, width = video.shape[1:3]
    assert (width, height) == (clip["video_width"], clip["video_height"])
    pose = clip["pose"]

    frames = render_motion_frames([pose], size=None, background_frames=video)
    assert frames.shape == (4, height, width, 3)  # the shorter of motion and video
    for t in range(4):
        changed = (frames[t] != video[t]).any(axis=-1)
        assert 0.002 < changed.mean() < 0.2     # skeleton drawn, the rest of the video untouched
        # The skeleton lies where the NLF camera puts the joints: the pelvis pixel is drawn over.
        u, v = project_to_image(pose[t, J["spine1"]], width, height).astype(int)
        assert 0 <= u < width and 0 <= v < height and changed[max(v - 3, 0):v + 4, max(u - 3, 0):u + 4].any()

    # Resized into a smaller panel (letterboxed), next to a panel without background, to mp4.
    out = render_motion_panels([pose, pose], tmp_path / "bg.mp4", size=(128, 128),
                               background_frames=[video, None])
    decoded = _decode_mp4(out)
    assert decoded.shape == (4, 128, 256, 3)
    scale = min(128 / width, 128 / height)
    new_w = round(width * scale)
    off = (128 - new_w) // 2
    assert decoded[0, :, :max(off - 2, 1)].mean() < 8   # letterbox bars stay black
    bg_small = np.asarray(Image.fromarray(video[0]).resize((new_w, 128), Image.BILINEAR))
    assert _mean_abs_diff(decoded[0, :, off:off + new_w], bg_small) < 20


# --- codebook plot ----------------------------------------------------------------------------

def test_codebook_plot_writes_png_and_stats(tmp_path):
    import imageio.v3 as iio

    counts = np.array([10, 0, 5, 0, 0, 1, 4, 0])
    stats = plot_code_usage(counts, tmp_path / "plots" / "codes.png", title="4DMoT")
    assert stats["active_fraction"] == pytest.approx(4 / 8)
    p = np.array([10, 5, 1, 4]) / 20
    assert stats["perplexity"] == pytest.approx(np.exp(-np.sum(p * np.log(p))))
    image = iio.imread(tmp_path / "plots" / "codes.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    uniform = plot_code_usage(np.full(16, 3), tmp_path / "uniform.png")
    assert uniform["active_fraction"] == 1.0 and uniform["perplexity"] == pytest.approx(16)
    empty = plot_code_usage(np.zeros(4), tmp_path / "empty.png")
    assert empty["active_fraction"] == 0.0 and (tmp_path / "empty.png").exists()
    with pytest.raises(ValueError):
        plot_code_usage(np.array([1, -1]), tmp_path / "bad.png")
