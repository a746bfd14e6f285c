"""`mtvjax animate` end to end on tiny random MV-DiT-17B (Wan family) checkpoints (CPU)."""
import pytest

from animate_helpers import FAST, WINDOW, _cli, _config
from conftest import REPO_ROOT
from mtvjax.tools import random_checkpoints
from mtvjax.sample.animate import animate
from mtvjax.viz.skeleton_video import read_video_frames


@pytest.fixture(scope="module")
def set17b(tmp_path_factory):
    return random_checkpoints.write_set(str(tmp_path_factory.mktemp("tiny17b")), "wan", WINDOW)


def test_17b_animates_with_prompt_text_and_motion_cfg(set17b, animate_inputs, mtvcrafter_sample,
                                                      tmp_path):
    out = tmp_path / "out17.mp4"
    result = _cli("--config", f"{REPO_ROOT}/configs/animate.py:17b",
                  "--ref-image", animate_inputs / "ref.png", "--motion",
                  mtvcrafter_sample / "sampled_data.pkl", "--out", out, "--frames", WINDOW,
                  "--prompt", "a woman is dancing on the beach", "--motion-cfg", 2.0,
                  "--noprogress", *FAST, *set17b["flags"], "--resolution", "0x0",
                  "--config.video.bucket_base=128")
    assert "s per sampling step" in result.stdout
    # 90 × 70 px (h/w 1.29) → the (576, 448) bucket scaled to base 128
    assert read_video_frames(out).shape == (WINDOW, 144, 112, 3)


def test_17b_long_video_from_precomputed_prompt_embeddings(set17b, animate_inputs, tmp_path):
    out = tmp_path / "long17.mp4"
    config = _config("17b", set17b, video__frames=25,
                     prompt_embeddings=set17b["prompt_embeddings"])
    config.checkpoints.text_encoder = ""
    report = animate(config, animate_inputs / "ref.png", animate_inputs / "motion.npy", out,
                     progress=False)
    assert report["windows"] == 2
    assert read_video_frames(out).shape == (25, 64, 64, 3)


def test_17b_isa_model_animates_with_motion_cfg(animate_inputs, tmp_path):
    isa = random_checkpoints.write_set(str(tmp_path / "set"), "wan", WINDOW, text_encoder=False,
                                       model_fields={"conditioning": "isa"})
    out = tmp_path / "isa17.mp4"
    config = _config("17b", isa, video__frames=WINDOW, sampling__motion_cfg=2.0,
                     prompt_embeddings=isa["prompt_embeddings"])
    report = animate(config, animate_inputs / "ref.png", animate_inputs / "motion.npy", out,
                     progress=False)
    assert report["conditioning"] == "isa"
    assert read_video_frames(out).shape == (WINDOW, 64, 64, 3)
