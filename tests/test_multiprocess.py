"""Two JAX processes on 127.0.0.1 (4 CPU devices each) train 4DMoT like one 8-device process.

Covers `launch/multiprocess_local.sh`, `jax.distributed` start-up from the environment, global
batches assembled from per-process loader shares, Orbax checkpoints written and restored by all
processes, SIGKILL + restart, and bounded failure when one process dies.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from conftest import REPO_ROOT
from mtvjax.models.fourdmot.tokenizer import Tokenizer
from mtvjax.train.metric_writer import read_metrics

pytestmark = pytest.mark.multiprocess

CONFIG = f"{REPO_ROOT / 'configs' / '4dmot.py'}:tiny"
FLAGS = ["--config.data.batch_size=8", "--config.data.frame_counts=(33,)",
         "--config.data.synthetic_sequences=16", "--config.data.synthetic_frames=(60, 80)",
         "--config.data.num_threads=1", "--config.train.num_steps=6", "--config.train.log_every=1",
         "--config.train.checkpoint_every=2", "--config.train.eval_batches=1",
         "--config.quantizer.reset_every=2"]


def _env(devices, **extra):
    from conftest import simulated_devices_env
    return simulated_devices_env(devices, **extra)


def _losses(workdir):
    return {step: row["loss"] for step, row in read_metrics(str(workdir)).items()}


def _wait_for(path, procs, timeout=400):
    deadline = time.time() + timeout
    while not path.exists():
        for p in procs:
            assert p.poll() is None, f"process exited early with {p.returncode}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("single8")
    out = subprocess.run([sys.executable, "-m", "mtvjax.cli", "train", "--config", CONFIG,
                          "--workdir", str(workdir)] + FLAGS,
                         env=_env(8), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return workdir


def test_two_processes_killed_and_resumed_match_one_process(single_process_run, tmp_path):
    script = [str(REPO_ROOT / "launch" / "multiprocess_local.sh"), "2", CONFIG, str(tmp_path)]

    def launch():
        env = _env(4, PORT=portpicker.pick_unused_port(), DEVICES_PER_PROCESS=4,
                   MTVJAX_HEARTBEAT_TIMEOUT=90)
        return subprocess.Popen(script + FLAGS, env=env, start_new_session=True)

    first = launch()
    _wait_for(tmp_path / "checkpoints" / "2", [first])
    os.killpg(first.pid, signal.SIGKILL)           # the launcher and both workers, at once
    first.wait()
    assert max(_losses(tmp_path)) < 6
    second = launch()
    assert second.wait(timeout=900) == 0, (tmp_path / "process_0.log").read_text()[-3000:]
    assert "resumed from" in (tmp_path / "process_1.log").read_text()
    assert _losses(tmp_path) == pytest.approx(_losses(single_process_run), rel=1e-5)
    ours = Tokenizer(str(tmp_path / "checkpoints")).state
    theirs = Tokenizer(str(single_process_run / "checkpoints")).state
    assert int(ours.step) == int(theirs.step) == 6
    for a, b in zip(*(np.asarray(x) for x in (ours.quantizer["codebook"], theirs.quantizer["codebook"]))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.params["encoder"]["conv_out"]["kernel"],
                               theirs.params["encoder"]["conv_out"]["kernel"], rtol=1e-4, atol=1e-6)


def test_survivor_exits_with_an_error_when_a_process_dies(tmp_path):
    port = portpicker.pick_unused_port()
    procs = []
    for i in range(2):
        env = _env(4, MTVJAX_COORDINATOR=f"127.0.0.1:{port}", MTVJAX_NUM_PROCESSES=2,
                   MTVJAX_PROCESS_ID=i, MTVJAX_HEARTBEAT_TIMEOUT=10)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mtvjax.cli", "train", "--config", CONFIG, "--workdir",
             str(tmp_path), "--config.train.num_steps=100000"] + FLAGS[:-4],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    _wait_for(tmp_path / "metrics.jsonl", procs)      # both are training
    procs[1].kill()
    killed_at = time.time()
    try:
        code = procs[0].wait(timeout=180)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the surviving process hung after its peer died")
    assert code != 0
    assert time.time() - killed_at < 180
