"""`mtvjax train --config configs/MODEL.py:VARIANT --workdir DIR [--config.key=value ...]`."""
from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from mtvjax.config import check_train_config
from mtvjax.errors import UsageError, UserError

config_flags.DEFINE_config_file("config", None, "Config file and variant, e.g. configs/4dmot.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard events and metrics.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = FLAGS.config, FLAGS.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"{workdir}: --workdir is a file, not a folder")
    if check_train_config(config) == "mvdit":                # before anything compiles
        from mtvjax.train.mvdit_trainer import train
    else:
        from mtvjax.train.fourdmot_trainer import train
    from mtvjax.parallel.distributed import initialize_from_env
    initialize_from_env()
    _, summary = train(config, workdir)
    if summary:
        print("final evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
