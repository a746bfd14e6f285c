"""Helpers the benchmarks share: wall-clock timing of a call and loading a PyTorch reference."""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def call_seconds(fn, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn()` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls (after one warm-up call)."""
    return float(np.median(call_seconds(fn, repeats)))


def torch_reference(name: str) -> ModuleType | None:
    """The repository's PyTorch reference `tests/<name>.py`, or None without torch or the file.

    Loading it also lets torch use every CPU core, as JAX does.
    """
    path = REPO / "tests" / f"{name}.py"
    if importlib.util.find_spec("torch") is None or not path.exists():
        return None
    import torch
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_num_threads(os.cpu_count() or 1)
    return module
