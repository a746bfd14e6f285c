"""The 4DMoT benchmark script runs end to end on the tiny variant and prints consistent figures."""
import re
import sys

from mtvjax.bench import tokenizer as bench


def test_matmul_peak_median_is_below_the_best_call():
    median, best = bench.matmul_peak_gflops(sizes=(64, 128), repeats=3)
    assert 0 < median <= best


def test_tiny_benchmark_prints_the_table(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak_gflops", lambda: (1.0, 2.0))  # keep the test short
    monkeypatch.setattr(sys, "argv", ["bench", "--variant", "tiny", "--batch", "2",
                                      "--frames", "9", "--steps", "1", "--no-torch"])
    bench.main()
    out = capsys.readouterr().out

    def figure(row):
        return float(re.search(rf"{re.escape(row)}\s+([\d.]+)", out).group(1))

    assert figure("JAX train step") > 0 and figure("JAX train step, XLA convolutions") > 0
    # XLA counts the matmul formulation's zero joint padding; the convolution's count excludes it.
    assert 0 < figure("model FLOPs per step (XLA)") <= figure("FLOPs the matmul step runs (XLA)")
    of_peak, of_best = map(int, re.search(r"(\d+)% of peak, (\d+)% of the best", out).groups())
    assert of_peak > 0 and abs(of_peak - 2 * of_best) <= 1  # the peaks passed in: 1 and 2
