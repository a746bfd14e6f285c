"""Training metrics to stdout, TensorBoard event files and `metrics.jsonl` in the workdir.

The JSON-lines file is the machine-readable record (one object per logged step); a resumed run
appends to it, so the last entry per step is the one that counts. For a remote workdir
(`gs://...`, where checkpoints go) the logs are written to `~/mtvjax_logs/<run name>` instead.
"""
from __future__ import annotations

import json
import os
import sys

from tensorboardX import SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if "://" in workdir:
            workdir = os.path.join(os.path.expanduser("~/mtvjax_logs"), workdir.rstrip("/").split("/")[-1])
            print(f"logs of the remote workdir go to {workdir}", flush=True)
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

    def write(self, step: int, scalars: dict[str, float], prefix: str = "train"):
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        for key, value in scalars.items():
            self._tb.add_scalar(f"{prefix}/{key}", value, step)
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **scalars}) + "\n")
        self._jsonl.flush()
        text = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        print(f"[{prefix}] step {step}: {text}", file=sys.stdout, flush=True)

    def close(self):
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
    """Logged metrics by step (later lines win, as after a resume)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.pop("split") == split:
                out[row.pop("step")] = row
    return out
