"""`mtvjax eval --config configs/eval_4dmot.py:NAME [--config.checkpoint=DIR]` (a 4DMoT tokenizer)
or `mtvjax eval --config configs/eval_video.py:NAME` (generated vs ground-truth videos; a config
with `generated_dir`): a JSON report + table."""
from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

from mtvjax.commands.checkpoint_dir import checkpoint_dir
from mtvjax.commands.motion_inputs import read_motion_files
from mtvjax.commands.results import NonFiniteResult, non_finite_numbers
from mtvjax.errors import UsageError

config_flags.DEFINE_config_file("config", None, "Evaluation config, e.g. "
                                "configs/eval_4dmot.py:sample or configs/eval_video.py:tiktok.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise UsageError("--config is required")
    config = FLAGS.config
    video = "generated_dir" in config      # configs/eval_video.py
    if video:
        from mtvjax.evaluate.video_eval import (default_report_path, evaluate, format_table,
                                                write_report)
        report = evaluate(config)
    else:
        from mtvjax.evaluate.tokenizer_eval import evaluate, format_table, write_report
        config.checkpoint = checkpoint_dir(config.checkpoint) if config.checkpoint else ""
        report = evaluate(config, read_files=read_motion_files)
    if config.report:
        path = config.report
    elif video:
        path = default_report_path(config)
    else:
        path = os.path.join(config.checkpoint, f"eval_{config.name}.json")
    write_report(report, path)
    print(format_table(report))
    print(f"report: {path}")
    bad = non_finite_numbers(report)
    if bad:
        print(f"warning: non-finite results ({', '.join(bad[:5])}); see {path}", file=sys.stderr)
        raise NonFiniteResult(f"{len(bad)} non-finite value(s) in the report {path}")
