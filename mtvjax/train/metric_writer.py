"""Training metrics to stdout, TensorBoard event files and `metrics.jsonl` in the workdir.

The JSON-lines file is the machine-readable record: one strict-JSON object per (split, step);
non-finite values are written as the strings "nan", "inf", "-inf" and `read_metrics` turns them
back into floats. A run starting at step S (a resume) first drops the rows of steps after S
(logged by the interrupted run after its last checkpoint) and logs a `split: "resume"` row at S;
a row logged again for the same split and step replaces the earlier one. For a remote workdir
(`gs://...`, where checkpoints go) the logs are written to `~/mtvjax_logs/<run name>` instead.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from tensorboardX import SummaryWriter

NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _json_value(value: float):
    return value if math.isfinite(value) else str(value)


def _read_rows(path: str) -> list[dict]:
    """The rows of a metrics file (a line cut short by a kill is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "step" in row and "split" in row:   # bare NaN of
                rows.append({k: _json_value(v) if isinstance(v, float) else v  # older files
                             for k, v in row.items()})
    return rows


class MetricWriter:
    def __init__(self, workdir: str, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        if "://" in workdir:
            workdir = os.path.join(os.path.expanduser("~/mtvjax_logs"), workdir.rstrip("/").split("/")[-1])
            print(f"logs of the remote workdir go to {workdir}", flush=True)
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._path = os.path.join(workdir, "metrics.jsonl")
            rows = _read_rows(self._path) if os.path.exists(self._path) else []
            kept = {(row["split"], row["step"]): row for row in rows if row["step"] <= start_step}
            self._rewrite(list(kept.values()))
            if start_step:
                self._append({"step": start_step, "split": "resume",
                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "dropped_rows": len(rows) - len(kept)})

    def _rewrite(self, rows: list[dict]):
        """Replaces the file by `rows` (written beside it, then renamed over it)."""
        with open(self._path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)
        os.replace(self._path + ".tmp", self._path)
        self._keys = {(row["split"], row["step"]) for row in rows}

    def _append(self, row: dict):
        key = (row["split"], row["step"])
        if key in self._keys:          # logged again (e.g. the evaluation of a finished run)
            self._rewrite([r for r in _read_rows(self._path) if (r["split"], r["step"]) != key])
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        self._keys.add(key)

    def write(self, step: int, scalars: dict[str, float], prefix: str = "train"):
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        for key, value in scalars.items():
            self._tb.add_scalar(f"{prefix}/{key}", value, step)
        self._append({"step": step, "split": prefix,
                      **{k: _json_value(v) for k, v in scalars.items()}})
        text = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        print(f"[{prefix}] step {step}: {text}", file=sys.stdout, flush=True)

    def close(self):
        if self.enabled:
            self._tb.close()


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
    """Logged metrics by step ("nan"/"inf"/"-inf" as floats; later lines win)."""
    out = {}
    for row in _read_rows(os.path.join(workdir, "metrics.jsonl")):
        if row.pop("split") == split:
            step = row.pop("step")
            out[step] = {k: NON_FINITE.get(v, v) if isinstance(v, str) else v
                         for k, v in row.items()}
    return out
