"""`mtvjax animate` end to end on tiny random MV-DiT-7B (CogVideoX family) checkpoints (CPU)."""
import json

import numpy as np
import pytest

from animate_helpers import FAST, WINDOW, _cli, _config
from conftest import REPO_ROOT
from mtvjax.tools import random_checkpoints
from mtvjax.sample.animate import animate
from mtvjax.viz.skeleton_video import read_video_frames


@pytest.fixture(scope="module")
def set7b(tmp_path_factory):
    return random_checkpoints.write_set(str(tmp_path_factory.mktemp("tiny7b")), "cogvideox",
                                        WINDOW)


def test_7b_animates_a_real_clip_into_an_mp4_its_seed_fixes(set7b, animate_inputs,
                                                           mtvcrafter_sample, tmp_path):
    motion = mtvcrafter_sample / "sampled_data.pkl"

    def run_cli(out):
        _cli("--config", f"{REPO_ROOT}/configs/animate.py:7b",
             "--ref-image", animate_inputs / "ref.png", "--motion", motion, "--out", out,
             "--frames", WINDOW,
             "--seed", 5, "--panel", "--noprogress", *FAST, *set7b["flags"])
        return read_video_frames(out)

    out = tmp_path / "cli" / "out.mp4"
    video = run_cli(out)
    assert video.shape == (WINDOW, 64, 64, 3)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["windows"] == 1 and report["seconds_per_step"] > 0
    panel = read_video_frames(report["panel"])
    assert len(panel) == WINDOW and panel.shape[2] > 4 * panel.shape[1]  # 5 columns incl. video
    # the skeleton columns move with the motion
    assert np.abs(panel[0].astype(int) - panel[-1].astype(int)).mean() > 1.0

    # The seed fixes the video. Bytes are compared in one process (tests/test_generate.py); across
    # processes XLA:CPU need not round alike: on the CI machine a second run of this same command
    # line decoded to 14.1 % different uint8 values, up to 44 (float32 rounding, amplified by
    # H.264 on these noise-like frames, which it codes with a mean error of ~27 here). So a rerun
    # must stay within a few levels on average, while another seed moves the frames by ~75.
    again = run_cli(tmp_path / "again" / "out.mp4")
    assert np.abs(again.astype(int) - video.astype(int)).mean() < 4.0


def test_7b_long_video_with_dynamic_pe_stitches_windows(animate_inputs, tmp_path, capsys):
    """Four windows of a `motion_pe="dynamic"` model, each rotated at its own first pose."""
    dynamic = random_checkpoints.write_set(str(tmp_path / "set"), "cogvideox", WINDOW,
                                           model_fields={"motion_pe": "dynamic"})
    out = tmp_path / "long.mp4"
    report = animate(_config("7b", dynamic, video__frames=37), animate_inputs / "ref.png",
                     animate_inputs / "motion.npy", out, progress=True)
    assert report["windows"] == 4 and report["window_starts"] == [0, 8, 16, 24]
    assert read_video_frames(out).shape == (37, 64, 64, 3)
    # the stages outside the sampling bar are announced (loading, tokenising, per-window work)
    stages = capsys.readouterr().err
    for stage in ("loading the cogvideox MV-DiT", "tokenising the motion", "encoding the reference",
                  "window 1/4: sampling 2 steps (the first compiles", "window 4/4: decoding"):
        assert stage in stages, stages[-2000:]


def test_7b_isa_model_animates_from_raw_motion_without_a_tokenizer(animate_inputs, tmp_path):
    """An ISA-conditioned MV-DiT (`model.conditioning="isa"`): two windows from the raw joints,
    motion CFG through the point-drop flag, no 4DMoT; the panel shows the input skeleton only."""
    isa = random_checkpoints.write_set(str(tmp_path / "set"), "cogvideox", WINDOW,
                                       model_fields={"conditioning": "isa"})
    assert "tokenizer" not in isa
    out = tmp_path / "isa.mp4"
    config = _config("7b", isa, video__frames=25, panel__enabled=True, panel__size=64)
    report = animate(config, animate_inputs / "ref.png", animate_inputs / "motion.npy", out,
                     progress=False)
    assert report["conditioning"] == "isa" and report["tokenizer_mpjpe_mm"] is None
    assert report["windows"] == 2
    video = read_video_frames(out)
    assert video.shape == (25, 64, 64, 3)
    assert read_video_frames(report["panel"]).shape[0] == 25


def test_clear_errors_before_any_work(set7b, animate_inputs, tmp_path):
    image, motion = animate_inputs / "ref.png", animate_inputs / "motion.npy"
    config = _config("7b", set7b, video__frames=WINDOW)
    config.checkpoints.mvdit = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="absent: checkpoints.mvdit folder not found"):
        animate(config, image, motion, tmp_path / "o.mp4", progress=False)
    with pytest.raises(ValueError, match="broken.png: cannot read the reference image"):
        animate(_config("7b", set7b), animate_inputs / "broken.png", motion, tmp_path / "o.mp4")
    with pytest.raises(ValueError, match="motion.npy.*60 frames.*too short for 97 frames"):
        animate(_config("7b", set7b, video__frames=97, long__window=97), image, motion,
                tmp_path / "o.mp4")
    result = _cli("--config", f"{REPO_ROOT}/configs/animate.py:7b",
                  "--ref-image", tmp_path / "missing.png", "--motion", motion,
                  "--out", tmp_path / "o.mp4", *set7b["flags"], check=False)
    assert result.returncode != 0
    assert "missing.png: reference image not found" in result.stderr
    assert not (tmp_path / "o.mp4").exists()
