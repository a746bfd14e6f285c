"""4DMoT training end to end: logs, checkpoints, exact resume (in-process and after SIGKILL), real data."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, logged_losses, override
from mtvjax.checkpoint.manager import read_config
from mtvjax.train.fourdmot_trainer import train
from mtvjax.train.metric_writer import read_metrics

OVERRIDES = {
    "data.batch_size": 4, "data.frame_counts": (33,), "data.synthetic_sequences": 16,
    "data.synthetic_frames": (70, 90), "data.num_threads": 1, "train.num_steps": 8,
    "train.log_every": 1, "train.checkpoint_every": 2, "train.eval_batches": 1,
    "quantizer.reset_every": 3,
}


def _config(**extra):
    return override(load_config("4dmot.py", "tiny"), {**OVERRIDES, **extra})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state, summary = train(_config(), str(workdir))
    return workdir, state, summary


def test_run_writes_logs_checkpoints_and_tensorboard(uninterrupted):
    workdir, state, summary = uninterrupted
    assert int(state.step) == 8
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6", "8"]   # keep the last 3
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    rows = read_metrics(str(workdir))
    assert sorted(rows) == list(range(1, 9))
    for key in ("loss", "recon", "commit", "perplexity", "active_codes", "lr", "step_time",
                "samples_per_s", "skipped", "dead_codes"):
        assert np.isfinite(rows[8][key]), key
    assert set(summary) >= {"recon", "mpjpe_mm", "active_codes", "perplexity"}
    config, step = read_config(str(workdir / "checkpoints"))
    assert step == 8 and config["model"]["code_dim"] == 64


def test_resume_reproduces_the_uninterrupted_losses(uninterrupted, tmp_path):
    reference, final_state, _ = uninterrupted
    train(_config(**{"train.stop_after_steps": 3}), str(tmp_path))
    assert logged_losses(tmp_path).keys() == {1, 2, 3}
    state, _ = train(_config(), str(tmp_path))
    assert logged_losses(tmp_path) == logged_losses(reference)
    np.testing.assert_array_equal(state.quantizer["codebook"], final_state.quantizer["codebook"])
    np.testing.assert_array_equal(state.params["decoder"]["conv_out"]["kernel"],
                                  final_state.params["decoder"]["conv_out"]["kernel"])


def test_existing_checkpoints_are_not_overwritten_without_resume(uninterrupted):
    config = _config()
    config.resume = False
    before = sorted(os.listdir(uninterrupted[0] / "tensorboard"))
    with pytest.raises(FileExistsError, match="resume"):
        train(config, str(uninterrupted[0]))
    assert sorted(os.listdir(uninterrupted[0] / "tensorboard")) == before


def _cli(workdir):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [sys.executable, "-m", "mtvjax.cli", "train", "--config",
            str(REPO_ROOT / "configs" / "4dmot.py") + ":tiny", "--workdir", str(workdir)] + flags


def test_sigkill_at_any_moment_then_rerun_matches_uninterrupted(uninterrupted, tmp_path):
    reference = uninterrupted[0]
    proc = subprocess.Popen(_cli(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "4").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(logged_losses(tmp_path))
    assert killed_at < 8, "the run finished before it was killed"
    out = subprocess.run(_cli(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resumed from" in out.stdout
    # no long silence before the first log line: the run says it is compiling, then how long it took
    assert "compiling the train step" in out.stdout and "first step done after" in out.stdout
    assert logged_losses(tmp_path) == logged_losses(reference)


def test_short_real_training_run_reduces_reconstruction_loss(mtvcrafter_sample, tmp_path):
    config = _config(**{"train.num_steps": 60, "train.log_every": 5, "train.checkpoint_every": 60,
                        "data.frame_counts": (33, 49), "data.strides": (1, 2)})
    config.data.source = "pkl"
    config.data.path = str(mtvcrafter_sample / "sampled_data.pkl")
    config.normalization.mean_path = str(mtvcrafter_sample / "mean.npy")
    config.normalization.std_path = str(mtvcrafter_sample / "std.npy")
    _, summary = train(config, str(tmp_path))
    recon = [row["recon"] for _, row in sorted(read_metrics(str(tmp_path)).items())]
    assert np.mean(recon[-3:]) < 0.7 * np.mean(recon[:2]), recon
    assert summary["mpjpe_mm"] < 400
