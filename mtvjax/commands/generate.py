"""`mtvjax generate --config configs/generate.py:tiktok|fashion|tiny[,17b] --config.entries=E
--config.out=OUT [--evaluate]`: every entry of a benchmark list or folder animated with the
models loaded once, resumable (a rerun makes only what is missing), written as the layout
`mtvjax eval --config configs/eval_video.py:...` reads (OUT/generated, OUT/ground_truth).

Several processes split the entries by MTVJAX_PROCESS_ID / MTVJAX_NUM_PROCESSES. `--evaluate`
(config: evaluate.enabled) then evaluates OUT and adds a row to the results table
(evaluate.table, default OUT/results.md and .json).
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mtvjax.errors import UsageError

config_flags.DEFINE_config_file("config", None, "Generate config: configs/generate.py:tiktok, "
                                ":fashion or :tiny (',17b' for the 17B).")
flags.DEFINE_boolean("evaluate", None, "Evaluate OUT and write the results table afterwards "
                     "(config: evaluate.enabled).")
flags.DEFINE_boolean("progress", True, "Progress bar over entries.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise UsageError("--config is required (configs/generate.py:tiktok, :fashion or :tiny)")
    from mtvjax.sample.generate import generate
    config = FLAGS.config
    if FLAGS.evaluate is not None:
        config.evaluate.enabled = FLAGS.evaluate
    report = generate(config, progress=FLAGS.progress)
    index, count = report["process"]
    per_entry = report["seconds_per_entry"]
    print(f"process {index}/{count}: generated {len(report['generated'])}, skipped "
          f"{len(report['skipped'])} already complete"
          + ("" if per_entry is None else f"; {per_entry:.2f} s per entry (models loaded once "
                                          f"in {report['load_seconds']:.1f} s)"))
    evaluation = report.get("evaluation")
    if isinstance(evaluation, str):
        print(f"evaluation {evaluation}")
    elif evaluation:
        print("  ".join(f"{k} {v:.4g}" for k, v in evaluation["metrics"].items()
                        if isinstance(v, float)))
        print(f"report: {evaluation['report']}\ntable: {evaluation['table']}")
