"""Ablation harness: train a grid of config switches on a CPU-sized preset and tabulate them.

    python -m mtvjax.tools.ablate --config configs/ablate.py:NAME [--config.key=value] [--workdir DIR]

For the grid of `configs/ablate.py:NAME` (rows: a base config, `tokenizer` = `configs/4dmot.py:tiny`
or `mvdit` = `configs/mvdit.py:tiny`, and dotted-key overrides):

1. **Data** (`prepare_data`): the shards the rows need are built into `DIR/data` once, from
   procedural data the package makes itself (`data_pipeline.synthetic_inputs.write_inputs` →
   `data_pipeline.build` motion shards with a held-out `val` split; `data_pipeline.latents`
   synthetic latent shards) or, for motion, from the real motion files `data.motion_inputs`
   names (any format `data_pipeline.readers.ingest` reads), unless `data.motion_path` /
   `data.latents_path` name existing datasets. A lock file serialises concurrent builders.
2. **Rows** (`run_row`): the base config + the family preset + data paths and `steps` + the row's
   overrides (`row_overrides`; a key the config lacks is an error, as on the command line), then
   the normal trainer (`fourdmot_trainer.train` / `mvdit_trainer.train`) in a fresh workdir
   `DIR/runs/ROW` (its log in `log.txt`), whose final evaluation runs on the held-out split. A row
   that fails is recorded with its error and the grid goes on. A finished row (`row.json`) with
   the same settings is reused (`reuse`); an interrupted one resumes from its checkpoints.
3. **Table** (`write_table`): `DIR/ablation.md`, `DIR/ablation.json` and stdout, one row per grid
   entry: status, final train loss (mean over the last 10 % of steps; the last step's in the
   JSON), held-out MPJPE in mm (tokenizer rows) or held-out loss (MV-DiT rows), median step time
   (s/step, compilation excluded), parameter count, and the error of failed rows; a grid's
   `columns` adds metrics of the final evaluation (`eval.KEY`) or the last train step
   (`train.KEY`).

At scale: `--config.only=ROW[,ROW...]` (names or grid indices, e.g. a SLURM array index) runs
only those rows and rewrites the table over every row finished so far; `--config.prepare_only`
builds the data; `--config.collect_only` only writes the table; `--config.print_commands` prints
per row the arguments of `mtvjax train` (`CONFIG WORKDIR --config.k=v ...`, for
`launch/slurm.sbatch` or `launch/tpu_vm.sh train`), whose run folders `collect_only` then reads.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

import ml_collections

from mtvjax.cli_runner import run_command
from mtvjax.config import check_train_config, load_config
from mtvjax.errors import UsageError
from mtvjax.models.layers.param_tree import count_params
from mtvjax.tools.ablation_rows import (apply_overrides, check_rows, fingerprint, row_overrides,
                                        select_rows)

ROW_FILE = "row.json"
SETTINGS_FILE = "settings.json"
MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def motion_inputs(config, out: Path) -> tuple[str, ...]:
    """The motion files to build from: `data.motion_inputs` (checked to exist) or procedural
    clips (`write_inputs`) written beside `out`."""
    from data_pipeline.synthetic_inputs import write_inputs
    d = config.data
    if not d.motion_inputs:
        return (write_inputs(out.parent / "motion_inputs", int(d.motion_clips),
                             tuple(d.motion_frames), seed=int(d.seed)),)
    missing = [p for p in d.motion_inputs if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"config.data.motion_inputs: {', '.join(missing)} not found "
                                "(the grid needs this real motion data)")
    return tuple(os.path.abspath(p) for p in d.motion_inputs)


def build_motion(config, out: Path) -> None:
    """Procedural or real motion (`motion_inputs`) → motion shards with a val split
    (`data_pipeline.build`)."""
    from data_pipeline.build import build
    d = config.data
    build(ml_collections.ConfigDict(dict(
        name="ablation_motion", inputs=motion_inputs(config, out), output=str(out), ingest={},
        target_fps=float(d.target_fps),
        min_frames=33, val_fraction=float(d.val_fraction), seed=int(d.seed), shard_records=1024,
        video=dict(store="reference", base_resolution=512, shard_frames=4096))))
    manifest = json.loads((out / MANIFEST).read_text())
    if not manifest["splits"]["val"]["records"]:
        raise ValueError(f"{out}: no clip went to the val split; raise data.motion_clips or "
                         "data.val_fraction")


def build_latents(config, out: Path) -> None:
    """Synthetic MV-DiT latent shards (`data_pipeline.latents`, `data.latent_config`)."""
    from data_pipeline.latents import build
    d = config.data
    c = load_config(d.latent_config)
    c.output = str(out)
    c.motion.synthetic_sequences = int(d.latent_sequences)
    c.motion.seed = int(d.seed)
    c.val_fraction = float(d.val_fraction)
    c.seed = int(d.seed)
    manifest = build(c)
    if not manifest["splits"]["val"]["records"]:
        raise ValueError(f"{out}: no window went to the val split; raise data.latent_sequences")


def prepare_paths(config, workdir: Path) -> dict:
    """{"motion": folder, "latents": folder}: the configured datasets or `workdir/data/...`."""
    return {"motion": os.path.abspath(config.data.motion_path) if config.data.motion_path
            else str(workdir / "data" / "motion"),
            "latents": os.path.abspath(config.data.latents_path) if config.data.latents_path
            else str(workdir / "data" / "latents")}


def prepare_data(config, workdir: Path, families) -> dict:
    """Builds the datasets the `families` need into `workdir/data` unless configured or already
    built (under a lock, for concurrent jobs); returns `prepare_paths`."""
    paths = prepare_paths(config, workdir)
    jobs = {"tokenizer": ("motion", config.data.motion_path, build_motion),
            "mvdit": ("latents", config.data.latents_path, build_latents)}
    for family in sorted(set(families)):
        key, given, builder = jobs[family]
        out = Path(paths[key])
        if given:
            if not (out / MANIFEST).is_file():
                raise FileNotFoundError(f"{out}: not a built dataset (no {MANIFEST})")
            continue
        with _lock(workdir / "data" / ".lock"):
            if not (out / MANIFEST).is_file():
                print(f"building {key} data in {out}", file=sys.stderr, flush=True)
                builder(config, out)
    return paths


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


def _finite(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def metrics_result(run_dir: Path) -> dict:
    """Train loss, step time and the final evaluation from a run's `metrics.jsonl`."""
    from mtvjax.train.metric_writer import read_metrics
    train = read_metrics(str(run_dir), "train")
    evals = read_metrics(str(run_dir), "eval")
    if not train:
        return {"final_step": 0}
    steps = sorted(train)
    losses = [train[s]["loss"] for s in steps]
    tail = losses[-max(1, len(losses) // 10):]
    times = [train[s]["step_time"] for s in steps[1:]] or [train[steps[0]]["step_time"]]
    final_eval = evals[max(evals)] if evals else {}
    return {"final_step": steps[-1], "train_loss": _finite(losses[-1]),
            "train_loss_tail": _finite(statistics.fmean(tail)),
            "step_time_s": float(statistics.median(times)),
            "val_mpjpe_mm": _finite(final_eval.get("mpjpe_mm")),
            "val_loss": _finite(final_eval.get("loss")),
            "eval": {k: float(v) for k, v in final_eval.items()},
            "train": {k: float(v) for k, v in train[steps[-1]].items()
                      if isinstance(v, (int, float))}}


def config_param_count(config, family: str) -> int:
    """Parameters of the model a config trains, from shapes only (nothing allocated)."""
    import flax.linen as nn
    import jax
    if family == "tokenizer":
        from mtvjax.models.fourdmot.build import build_model
        from mtvjax.train import fourdmot_step as steps
        model = build_model(config.model)
        tx = steps.make_optimizer(config)
        return count_params(steps.abstract_state(config, model, tx).params)
    from mtvjax.train import mvdit_step as steps
    from mtvjax.train import mvdit_trainer as trainer
    config, _ = trainer.fit_config(config, trainer.make_source(config)[0])
    model = steps.build_model(config)
    return count_params(nn.meta.unbox(jax.eval_shape(
        lambda rng: steps.init_variables(config, model, rng), jax.random.PRNGKey(0))))


def _train(config, family: str, run_dir: Path):
    check_train_config(config)
    if family == "tokenizer":
        from mtvjax.train.fourdmot_trainer import train
    else:
        from mtvjax.train.mvdit_trainer import train
    return train(config, str(run_dir))


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _row_header(config, row: dict, overrides: dict) -> dict:
    base = config.bases[row["base"]]
    return {"name": row["name"], "base": row["base"], "base_config": base,
            "overrides": dict(row.get("overrides") or {}),
            "fingerprint": fingerprint(base, overrides)}


def _fresh_run_dir(run_dir: Path, header: dict, overrides: dict, keep: bool) -> None:
    """Empties `run_dir` unless `keep` and it holds a run of the same settings (which the trainer
    then resumes from its checkpoints); records the settings."""
    settings = _read_json(run_dir / SETTINGS_FILE)
    if run_dir.exists() and not (keep and settings
                                 and settings.get("fingerprint") == header["fingerprint"]):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / SETTINGS_FILE, {**header, "all_overrides": overrides})


def finished_row(config, row: dict, paths: dict, workdir: Path) -> dict | None:
    """The row's earlier result when `reuse` is on and it finished with the same settings."""
    previous = _read_json(workdir / "runs" / row["name"] / ROW_FILE)
    fingerprint = _row_header(config, row, row_overrides(config, row, paths))["fingerprint"]
    if (config.reuse and previous and previous.get("status") == "ok"
            and previous.get("fingerprint") == fingerprint):
        return previous
    return None


def run_row(config, row: dict, paths: dict, workdir: Path) -> dict:
    """Trains and evaluates one row in `workdir/runs/NAME` (or returns its reusable earlier
    result); never raises for a failed run."""
    reusable = finished_row(config, row, paths, workdir)
    if reusable:
        return reusable
    run_dir = workdir / "runs" / row["name"]
    overrides = row_overrides(config, row, paths)
    result = _row_header(config, row, overrides)
    previous = _read_json(run_dir / ROW_FILE)
    _fresh_run_dir(run_dir, result, overrides,
                   keep=bool(config.reuse) and not (previous and previous.get("status") != "ok"))
    start = time.perf_counter()
    with open(run_dir / "log.txt", "a", encoding="utf-8") as log:
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                run_config = apply_overrides(load_config(result["base_config"]), overrides)
                state, _ = _train(run_config, row["base"], run_dir)
            result.update(status="ok", error="", params=count_params(state.params),
                          **metrics_result(run_dir))
            if result.get("final_step", 0) < int(config.steps):
                result.update(status="error", error=f"stopped at step {result['final_step']}")
        except Exception as e:  # noqa: BLE001 — a failed row is a result, not the grid's end
            traceback.print_exc(file=log)
            result.update(status="error", error=f"{type(e).__name__}: {e}")
    result["wall_s"] = time.perf_counter() - start
    _write_json(run_dir / ROW_FILE, result)
    return result


def collect_row(config, row: dict, paths: dict, workdir: Path) -> dict:
    """A row's result from its run folder: `row.json`, or the metrics of an external
    `mtvjax train` run (`print_commands`); "pending" when it has not run."""
    run_dir = workdir / "runs" / row["name"]
    overrides = row_overrides(config, row, paths)
    result = _row_header(config, row, overrides)
    done = _read_json(run_dir / ROW_FILE)
    if done and done.get("fingerprint") == result["fingerprint"]:
        return done
    if done:
        return {**result, "status": "stale", "error": "run with other settings"}
    if not (run_dir / "metrics.jsonl").is_file():
        return {**result, "status": "pending", "error": ""}
    result.update(metrics_result(run_dir))
    finished = result.get("final_step", 0) >= int(config.steps)
    result.update(status="ok" if finished else "running", error="")
    try:
        run_config = apply_overrides(load_config(result["base_config"]), overrides)
        result["params"] = config_param_count(run_config, row["base"])
    except Exception as e:  # noqa: BLE001
        result["error"] = f"params: {type(e).__name__}: {e}"
    return result


def train_command(row_result: dict, overrides: dict, run_dir: Path) -> str:
    """`CONFIG WORKDIR --config.k=v ...` of a row, shell-quoted (config_flags value syntax); the
    config path relative to the current directory when it lies below it."""
    def value(v):
        return repr(tuple(v)) if isinstance(v, (list, tuple)) else str(v)
    path, _, variant = row_result["base_config"].partition(":")
    relative = os.path.relpath(path)              # portable to workers with their own checkout
    path = path if relative.startswith("..") else relative
    args = [f"{path}:{variant}" if variant else path, str(run_dir)]
    args += [f"--config.{k}={value(v)}" for k, v in overrides.items()]
    return " ".join(shlex.quote(a) for a in args)


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------

COLUMNS = (("row", "name"), ("base", "base"), ("overrides", "overrides"), ("status", "status"),
           ("train loss", "train_loss_tail"), ("val MPJPE (mm)", "val_mpjpe_mm"),
           ("val loss", "val_loss"), ("s/step", "step_time_s"), ("params", "params"),
           ("error", "error"))


def _cell(key: str, value) -> str:
    if value is None or value == "":
        return "" if key == "error" else "—"
    if key == "overrides":
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "(base)"
    if key == "params":
        return f"{int(value):,}"
    if key == "step_time_s":
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def _value(result: dict, key: str):
    """`result[key]`, or for `eval.KEY` / `train.KEY` that metric of the row's final evaluation
    / last train step."""
    section, _, metric = key.partition(".")
    if metric and section in ("eval", "train"):
        return (result.get(section) or {}).get(metric)
    return result.get(key)


def format_table(results: list[dict], extra_columns=()) -> str:
    columns = COLUMNS[:-1] + tuple((key, key) for key in extra_columns) + COLUMNS[-1:]
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in results:
        lines.append("| " + " | ".join(_cell(key, _value(r, key)) for _, key in columns) + " |")
    return "\n".join(lines)


def write_table(config, workdir: Path, results: list[dict]) -> str:
    table = format_table(results, tuple(config.columns))
    notes = []
    if any(r.get("overrides", {}).get("model.coord_dim") == 2 for r in results):
        notes.append("Rows with `model.coord_dim=2` report MPJPE over (x, y) only.")
    header = (f"# Ablation `{config.name}`\n\n{config.steps} steps per row; train loss = mean "
              "over the last 10 % of steps; val = the held-out split; s/step = median, "
              "compilation excluded.\n\n")
    text = header + table + "\n" + "".join(f"\n{n}\n" for n in notes)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f".ablation.md.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, workdir / "ablation.md")
    _write_json(workdir / "ablation.json", {"name": config.name, "steps": int(config.steps),
                                            "workdir": str(workdir), "rows": results})
    return table


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def default_workdir(config) -> str:
    return os.path.join("workdir-ablate", config.name)


def run_ablation(config, workdir: str | os.PathLike | None = None) -> dict:
    """Runs (or collects) the grid of `config` in `workdir`; returns {"rows": [...], "table"}."""
    workdir = Path(workdir or default_workdir(config)).absolute()
    rows = list(config.rows)
    check_rows(rows)
    chosen = select_rows(rows, config.only)
    paths = prepare_paths(config, workdir)        # every row's fingerprint uses these
    if not config.collect_only:
        prepare_data(config, workdir, [r["base"] for r in chosen])
    if config.prepare_only:
        return {"rows": [], "table": "", "paths": paths}
    if config.print_commands:
        for row in chosen:
            overrides = row_overrides(config, row, paths)
            header = _row_header(config, row, overrides)
            run_dir = workdir / "runs" / row["name"]
            done = _read_json(run_dir / ROW_FILE)  # a finished in-process run is kept as is
            failed = bool(done) and done.get("status") != "ok"
            _fresh_run_dir(run_dir, header, overrides, keep=not failed)
            print(train_command(header, overrides, run_dir))
        return {"rows": [], "table": "", "paths": paths}
    if not config.collect_only:
        for row in chosen:
            action = ("reusing its finished run" if finished_row(config, row, paths, workdir)
                      else "training")
            print(f"[ablate] {row['name']}: {action} ({row['base']}, "
                  f"{row.get('overrides') or 'base'})", flush=True)
            result = run_row(config, row, paths, workdir)
            loss = result.get("train_loss_tail")
            print(f"[ablate] {row['name']}: {result['status']}"
                  + (f", train loss {loss:.4g}" if loss is not None else "")
                  + (f" ({result['error']})" if result.get("error") else ""), flush=True)
            write_table(config, workdir, [collect_row(config, r, paths, workdir) for r in rows])
    results = [collect_row(config, r, paths, workdir) for r in rows]
    table = write_table(config, workdir, results)
    return {"rows": results, "table": table, "paths": paths}


def main() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Ablation grid, e.g. configs/ablate.py:smoke.")
    flags.DEFINE_string("workdir", None, "Output folder (default: workdir-ablate/NAME).")
    flags.mark_flags_as_required(["config"])

    def run(argv):
        if len(argv) > 1:
            raise UsageError(f"unexpected arguments: {argv[1:]}")
        config = flags.FLAGS.config
        out = run_ablation(config, flags.FLAGS.workdir)
        if out["table"]:
            workdir = Path(flags.FLAGS.workdir or default_workdir(config)).absolute()
            print(f"\n{out['table']}\n\nwrote {workdir / 'ablation.md'} and "
                  f"{workdir / 'ablation.json'}")
        elif config.prepare_only:
            print("data: " + ", ".join(f"{k}={v}" for k, v in out["paths"].items()),
                  file=sys.stderr)

    run_command(run, sys.argv, "python -m mtvjax.tools.ablate", __doc__)


if __name__ == "__main__":
    main()
