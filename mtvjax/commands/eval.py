"""`mtvjax eval --config configs/eval_4dmot.py:NAME [--config.checkpoint=DIR]` (a 4DMoT tokenizer)
or `mtvjax eval --config configs/eval_video.py:NAME` (generated vs ground-truth videos; a config
with `generated_dir`): a JSON report + table."""
from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Evaluation config, e.g. "
                                "configs/eval_4dmot.py:sample or configs/eval_video.py:tiktok.")
FLAGS = flags.FLAGS


def read_motion_files(path: str):
    """(name, motion) clips of every motion file under `path` (all the formats the data pipeline
    reads), and one message per unreadable file."""
    from data_pipeline.readers.ingest import scan_inputs
    records, errors = scan_inputs(path)
    return [(r.source_id, r.motion) for r in records], [f"{e.path}: {e.message}" for e in errors]


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise SystemExit("mtvjax eval: --config is required")
    config = FLAGS.config
    video = "generated_dir" in config      # configs/eval_video.py
    if video:
        from mtvjax.evaluate.video_eval import (default_report_path, evaluate, format_table,
                                                write_report)
    else:
        from mtvjax.evaluate.tokenizer_eval import evaluate, format_table, write_report
    try:
        report = evaluate(config) if video else evaluate(config, read_files=read_motion_files)
    except (OSError, ValueError) as e:
        raise SystemExit(f"mtvjax eval: {e}") from e
    if config.report:
        path = config.report
    elif video:
        path = default_report_path(config)
    else:
        path = os.path.join(config.checkpoint, f"eval_{config.name}.json")
    write_report(report, path)
    print(format_table(report))
    print(f"report: {path}")
