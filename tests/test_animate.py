"""`mtvjax animate` end to end on tiny random checkpoints of both families (CPU)."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, load_config
from mtvjax.data.synthetic import SyntheticMotionSource
from mtvjax.sample import random_checkpoints
from mtvjax.sample.animate import animate
from mtvjax.viz.skeleton_video import read_video_frames

WINDOW = 17
FAST = ["--steps", "2", "--config.vae.tiling=False"]


def _cli(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "mtvjax.cli", "animate", *map(str, args)],
                         capture_output=True, text=True, timeout=900)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _config(variant, checkpoint_set, **fields):
    config = load_config("animate.py", variant)
    for name in ("mvdit", "tokenizer", "vae", "clip", "text_encoder", "text_tokenizer"):
        if name in checkpoint_set:
            config.checkpoints[name] = checkpoint_set[name]
    config.dtype, config.vae.dtype, config.vae.tiling = "float32", "float32", False
    config.long.window, config.video.resolution = WINDOW, (64, 64)
    config.sampling.steps = 2
    for path, value in fields.items():
        node, *rest = path.split("__")
        if rest:
            config[node][rest[0]] = value
        else:
            config[node] = value
    return config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 70, 3)) * 255).astype(np.uint8)).save(folder / "ref.png")
    np.save(folder / "motion.npy", SyntheticMotionSource(1, (60, 60), seed=3)[0].motion)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def set7b(tmp_path_factory):
    return random_checkpoints.write_set(str(tmp_path_factory.mktemp("tiny7b")), "cogvideox",
                                        WINDOW)


@pytest.fixture(scope="module")
def set17b(tmp_path_factory):
    return random_checkpoints.write_set(str(tmp_path_factory.mktemp("tiny17b")), "wan", WINDOW)


def test_7b_animates_a_real_clip_into_an_mp4_deterministically(set7b, inputs, mtvcrafter_sample,
                                                              tmp_path):
    motion = mtvcrafter_sample / "sampled_data.pkl"
    out = tmp_path / "cli" / "out.mp4"
    _cli("--config", f"{REPO_ROOT}/configs/animate.py:7b",
         "--ref-image", inputs / "ref.png", "--motion", motion, "--out", out, "--frames", WINDOW,
         "--seed", 5, "--panel", "--noprogress", *FAST, *set7b["flags"])
    video = read_video_frames(out)
    assert video.shape == (WINDOW, 64, 64, 3)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["windows"] == 1 and report["seconds_per_step"] > 0
    panel = read_video_frames(report["panel"])
    assert len(panel) == WINDOW and panel.shape[2] > 4 * panel.shape[1]  # 5 columns incl. video
    # the skeleton columns move with the motion
    assert np.abs(panel[0].astype(int) - panel[-1].astype(int)).mean() > 1.0

    again = tmp_path / "again.mp4"
    animate(_config("7b", set7b, seed=5, video__frames=WINDOW), inputs / "ref.png", motion,
            again, progress=False)
    np.testing.assert_array_equal(read_video_frames(again), video)
    other = tmp_path / "other.mp4"
    animate(_config("7b", set7b, seed=6, video__frames=WINDOW), inputs / "ref.png", motion,
            other, progress=False)
    assert np.abs(read_video_frames(other).astype(int) - video.astype(int)).mean() > 1.0


def test_7b_long_video_with_dynamic_pe_stitches_windows(inputs, tmp_path):
    """Four windows of a `motion_pe="dynamic"` model, each rotated at its own first pose."""
    dynamic = random_checkpoints.write_set(str(tmp_path / "set"), "cogvideox", WINDOW,
                                           model_fields={"motion_pe": "dynamic"})
    out = tmp_path / "long.mp4"
    report = animate(_config("7b", dynamic, video__frames=37), inputs / "ref.png",
                     inputs / "motion.npy", out, progress=False)
    assert report["windows"] == 4 and report["window_starts"] == [0, 8, 16, 24]
    assert read_video_frames(out).shape == (37, 64, 64, 3)


def test_17b_animates_with_prompt_text_and_motion_cfg(set17b, inputs, mtvcrafter_sample,
                                                      tmp_path):
    out = tmp_path / "out17.mp4"
    result = _cli("--config", f"{REPO_ROOT}/configs/animate.py:17b",
                  "--ref-image", inputs / "ref.png", "--motion",
                  mtvcrafter_sample / "sampled_data.pkl", "--out", out, "--frames", WINDOW,
                  "--prompt", "a woman is dancing on the beach", "--motion-cfg", 2.0,
                  "--noprogress", *FAST, *set17b["flags"], "--resolution", "0x0",
                  "--config.video.bucket_base=128")
    assert "s per sampling step" in result.stdout
    # 90 × 70 px (h/w 1.29) → the (576, 448) bucket scaled to base 128
    assert read_video_frames(out).shape == (WINDOW, 144, 112, 3)


def test_17b_long_video_from_precomputed_prompt_embeddings(set17b, inputs, tmp_path):
    out = tmp_path / "long17.mp4"
    config = _config("17b", set17b, video__frames=25,
                     prompt_embeddings=set17b["prompt_embeddings"])
    config.checkpoints.text_encoder = ""
    report = animate(config, inputs / "ref.png", inputs / "motion.npy", out, progress=False)
    assert report["windows"] == 2
    assert read_video_frames(out).shape == (25, 64, 64, 3)


def test_7b_isa_model_animates_from_raw_motion_without_a_tokenizer(inputs, tmp_path):
    """An ISA-conditioned MV-DiT (`model.conditioning="isa"`): two windows from the raw joints,
    motion CFG through the point-drop flag, no 4DMoT; the panel shows the input skeleton only."""
    isa = random_checkpoints.write_set(str(tmp_path / "set"), "cogvideox", WINDOW,
                                       model_fields={"conditioning": "isa"})
    assert "tokenizer" not in isa
    out = tmp_path / "isa.mp4"
    config = _config("7b", isa, video__frames=25, panel__enabled=True, panel__size=64)
    report = animate(config, inputs / "ref.png", inputs / "motion.npy", out, progress=False)
    assert report["conditioning"] == "isa" and report["tokenizer_mpjpe_mm"] is None
    assert report["windows"] == 2
    video = read_video_frames(out)
    assert video.shape == (25, 64, 64, 3)
    assert read_video_frames(report["panel"]).shape[0] == 25
    other = tmp_path / "isa_other.mp4"
    animate(_config("7b", isa, video__frames=25, motion__start=20), inputs / "ref.png",
            inputs / "motion.npy", other, progress=False)
    assert np.abs(read_video_frames(other).astype(int) - video.astype(int)).mean() > 0.5


def test_17b_isa_model_animates_with_motion_cfg(inputs, tmp_path):
    isa = random_checkpoints.write_set(str(tmp_path / "set"), "wan", WINDOW, text_encoder=False,
                                       model_fields={"conditioning": "isa"})
    out = tmp_path / "isa17.mp4"
    config = _config("17b", isa, video__frames=WINDOW, sampling__motion_cfg=2.0,
                     prompt_embeddings=isa["prompt_embeddings"])
    report = animate(config, inputs / "ref.png", inputs / "motion.npy", out, progress=False)
    assert report["conditioning"] == "isa"
    assert read_video_frames(out).shape == (WINDOW, 64, 64, 3)


def test_clear_errors_before_any_work(set7b, inputs, tmp_path):
    image, motion = inputs / "ref.png", inputs / "motion.npy"
    config = _config("7b", set7b, video__frames=WINDOW)
    config.checkpoints.mvdit = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="absent: checkpoints.mvdit folder not found"):
        animate(config, image, motion, tmp_path / "o.mp4", progress=False)
    with pytest.raises(ValueError, match="broken.png: cannot read the reference image"):
        animate(_config("7b", set7b), inputs / "broken.png", motion, tmp_path / "o.mp4")
    with pytest.raises(ValueError, match="motion.npy.*60 frames, too short for 97 frames"):
        animate(_config("7b", set7b, video__frames=97, long__window=97), image, motion,
                tmp_path / "o.mp4")
    result = _cli("--config", f"{REPO_ROOT}/configs/animate.py:7b",
                  "--ref-image", tmp_path / "missing.png", "--motion", motion,
                  "--out", tmp_path / "o.mp4", *set7b["flags"], check=False)
    assert result.returncode != 0
    assert "missing.png: reference image not found" in result.stderr
    assert not (tmp_path / "o.mp4").exists()
