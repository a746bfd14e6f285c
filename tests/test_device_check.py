"""The device check script runs the trainer's step per attention kernel and the PyTorch reference
at the same depth (tiny sizes, on CPU)."""
import subprocess
import sys

from conftest import REPO_ROOT

from mtvjax.bench.device_check import fitting_layers, peak_tflops, state_bytes


def test_rows_for_each_kernel_and_failures_reported():
    out = subprocess.run(
        [sys.executable, "-m", "mtvjax.bench.device_check", "--config",
         f"{REPO_ROOT / 'configs' / 'mvdit.py'}:tiny", "--frames", "9", "--height", "32",
         "--width", "32", "--attention", "chunked,cudnn", "--steps", "1", "--torch"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()
            if line.startswith("| ") and "attention" not in line}
    chunked = rows["chunked"].split("|")
    assert chunked[3].strip() == "2/2" and float(chunked[4]) > 0   # layers, step seconds
    assert "failed" in rows["cudnn"]          # no cuDNN on CPU: a row saying so, not a crash
    torch_row = rows["torch sdpa f32"].split("|")  # the PyTorch reference at the same depth
    assert torch_row[3].strip() == "2/2" and float(torch_row[4]) > 0
    assert float(torch_row[5]) == float(chunked[5])               # the JAX row's FLOP count


def test_depth_is_cut_to_fit_the_memory():
    from conftest import load_config
    config = load_config("mvdit.py", "tiny")
    one, two = state_bytes(config, 1), state_bytes(config, 2)
    assert two > one
    assert fitting_layers(config, 10 * two) == 2                  # the config's own depth
    assert fitting_layers(config, one + (two - one) // 2) == 1
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("cpu") is None
