"""User commands on a trained 4DMoT: tokenize, eval from a config, viz motion / codebook."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from mtvjax.models.fourdmot.tokenizer import Tokenizer, segment_motion


def _mtvjax(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "mtvjax.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 4DMoT trained for a few steps on the embedded default data."""
    workdir = tmp_path_factory.mktemp("tok")
    _mtvjax("train", "--config", f"{REPO_ROOT / 'configs' / '4dmot.py'}:tiny", "--workdir", workdir,
            "--config.train.num_steps=6", "--config.data.batch_size=4",
            "--config.data.frame_counts=(49,)", "--config.train.eval_batches=1",
            "--config.data.synthetic_sequences=16")
    return workdir / "checkpoints"


@pytest.fixture(scope="module")
def motion_file(tmp_path_factory):
    from mtvjax.data.synthetic_motion import SyntheticMotionSource
    path = tmp_path_factory.mktemp("motion") / "clip.npy"
    np.save(path, SyntheticMotionSource(1, (120, 120), seed=9)[0].motion)
    return path


def test_segments_cover_the_clip_and_the_tail_is_end_aligned():
    motion = np.arange(100)[:, None, None] * np.ones((100, 24, 3), np.float32)
    segments, starts = segment_motion(motion, 49)
    assert starts.tolist() == [0, 49, 51] and segments.shape == (3, 49, 24, 3)
    np.testing.assert_array_equal(segments[2, -1, 0, 0], 99)
    segments, starts = segment_motion(motion, 33, stride=2)
    assert starts.tolist() == [0, 35] and segments[1, -1, 0, 0] == 99
    with pytest.raises(ValueError, match="too short for one segment of 81 frames at stride 2"):
        segment_motion(motion, 81, stride=2, name="clip")


def test_tokenize_writes_tokens_reconstruction_and_errors(checkpoint, motion_file, tmp_path):
    out_path = tmp_path / "tokens.npz"
    _mtvjax("tokenize", "--checkpoint", checkpoint, "--motion", motion_file, "--out", out_path,
            "--quantized")
    out = np.load(out_path)
    assert out["indices"].shape == (3, 13, 24) and out["indices"].dtype == np.int32
    assert out["recon_mm"].shape == out["motion_mm"].shape == (3, 49, 24, 3)
    assert out["quantized"].shape == (3, 13, 24, 64)
    assert out["start"].tolist() == [0, 49, 71] and out["mpjpe_mm"].shape == (3,)
    tokenizer = Tokenizer(str(checkpoint))
    direct = tokenizer.tokenize(out["motion_mm"])
    np.testing.assert_array_equal(direct["indices"], out["indices"])
    codebook = np.asarray(tokenizer.state.quantizer["codebook"])
    np.testing.assert_allclose(out["quantized"], codebook[out["indices"]])
    err = np.linalg.norm(out["recon_mm"] - out["motion_mm"], axis=-1).mean(axis=(1, 2))
    np.testing.assert_allclose(out["mpjpe_mm"], err, rtol=1e-4)


def test_tokenize_reports_bad_input_clearly(checkpoint, tmp_path):
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((20, 24, 3), np.float32))
    out = _mtvjax("tokenize", "--checkpoint", checkpoint, "--motion", short, "--out",
                  tmp_path / "x.npz", check=False)
    assert out.returncode != 0 and "short.npy" in out.stderr and "too short" in out.stderr
    out = _mtvjax("tokenize", "--checkpoint", tmp_path / "nothing", "--motion", short, "--out",
                  tmp_path / "x.npz", check=False)
    assert out.returncode != 0 and "checkpoint folder not found" in out.stderr
    assert not (tmp_path / "x.npz").exists()


def test_eval_from_config_writes_report_and_table(checkpoint, tmp_path):
    report_path = tmp_path / "report.json"
    out = _mtvjax("eval", "--config", f"{REPO_ROOT / 'configs' / 'eval_4dmot.py'}:synthetic",
                  f"--config.checkpoint={checkpoint}", f"--config.report={report_path}")
    report = json.loads(report_path.read_text())
    result = report["datasets"]["synthetic"]
    for key in ("mpjpe_mm", "root_mpjpe_mm", "pa_mpjpe_mm", "accel_error_mm", "perplexity",
                "active_codes"):
        assert np.isfinite(result[key]), key
    assert result["pa_mpjpe_mm"] <= result["root_mpjpe_mm"] + 1e-3
    assert len(result["per_joint_mpjpe_mm"]) == 24 and len(result["code_histogram"]) == 256
    assert sum(result["code_histogram"]) == result["segments"] * 13 * 24
    assert "mpjpe_mm" in out.stdout and "synthetic" in out.stdout


def test_eval_on_the_real_sample(checkpoint, mtvcrafter_sample, tmp_path):
    report_path = tmp_path / "sample.json"
    _mtvjax("eval", "--config", f"{REPO_ROOT / 'configs' / 'eval_4dmot.py'}:sample",
            f"--config.checkpoint={checkpoint}", f"--config.report={report_path}")
    result = json.loads(report_path.read_text())["datasets"]["mtvcrafter_sample"]
    assert result["clips"] == 3 and result["segments"] == 3 + 12 + 14


def test_viz_motion_and_codebook(checkpoint, motion_file, tmp_path):
    import av
    tokens = tmp_path / "tokens.npz"
    _mtvjax("tokenize", "--checkpoint", checkpoint, "--motion", motion_file, "--out", tokens)
    video = tmp_path / "side_by_side.mp4"
    _mtvjax("viz", "motion", "--motion", motion_file, "--recon", tokens, "--out", video)
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 120       # each clip frame once (the end-aligned tail overlaps)
    assert frames[0].shape[1] > frames[0].shape[0]            # two panels side by side
    assert not np.array_equal(frames[0], frames[40])           # the skeleton moves
    usage = tmp_path / "usage.png"
    out = _mtvjax("viz", "codebook", "--checkpoint", checkpoint, "--data", motion_file,
                  "--out", usage)
    assert usage.stat().st_size > 1000 and "active codes" in out.stdout


def test_viz_codebook_reads_bvh_like_eval(checkpoint, cmu_bvh, tmp_path):
    bvh = sorted(cmu_bvh.glob("*.bvh"))[0]
    usage = tmp_path / "usage_bvh.png"
    out = _mtvjax("viz", "codebook", "--checkpoint", checkpoint, "--data", bvh, "--out", usage)
    assert usage.stat().st_size > 1000 and "active codes" in out.stdout
