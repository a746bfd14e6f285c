"""metrics.jsonl: strict JSON (non-finite values as strings), one row per step after a resume."""
import json
import math

from mtvjax.train.metric_writer import MetricWriter, read_metrics


def _strict_rows(workdir):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    text = (workdir / "metrics.jsonl").read_text()
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def test_non_finite_values_are_strict_json_and_read_back(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": -math.inf, "x": 2})
    writer.close()
    assert _strict_rows(tmp_path)[0]["loss"] == "nan"
    row = read_metrics(str(tmp_path))[1]
    assert math.isnan(row["loss"]) and row["grad_norm"] == math.inf and row["lr"] == -math.inf
    assert row["x"] == 2.0


def test_resume_drops_later_rows_and_records_itself(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(           # an older run, bare NaN, a cut-off line
        "".join(json.dumps({"step": s, "split": "train", "loss": float(s)}) + "\n"
                for s in range(1, 6)) + '{"step": 2, "split": "train", "loss": NaN}\n{"st')
    writer = MetricWriter(str(tmp_path), start_step=3)
    for step in (4, 5):
        writer.write(step, {"loss": 10.0 * step})
    writer.write(5, {"recon": 1.0}, prefix="eval")
    writer.write(5, {"recon": 2.0}, prefix="eval")        # logged again: replaces the first
    writer.close()
    rows = _strict_rows(tmp_path)
    assert [(r["split"], r["step"]) for r in rows] == [
        ("train", 1), ("train", 2), ("train", 3), ("resume", 3), ("train", 4), ("train", 5),
        ("eval", 5)]
    losses = {s: r["loss"] for s, r in read_metrics(str(tmp_path)).items()}
    assert losses[1] == 1.0 and math.isnan(losses[2]) and losses[4] == 40.0 and losses[5] == 50.0
    assert read_metrics(str(tmp_path), "eval") == {5: {"recon": 2.0}}
    assert read_metrics(str(tmp_path), "resume")[3]["dropped_rows"] == 3
