"""`mtvjax train --config configs/MODEL.py:VARIANT --workdir DIR [--config.key=value ...]`."""
from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file and variant, e.g. configs/4dmot.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard events and metrics.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    from mtvjax.parallel.distributed import initialize_from_env
    config = FLAGS.config
    if "model" in config and "family" in config.model:      # MV-DiT (configs/mvdit.py)
        from mtvjax.train.mvdit_trainer import train
    elif "quantizer" in config:                              # 4DMoT (configs/4dmot.py)
        from mtvjax.train.fourdmot_trainer import train
    else:
        raise SystemExit("the config is neither a 4DMoT config (config.quantizer) nor an MV-DiT "
                         "config (config.model.family)")
    initialize_from_env()
    _, summary = train(config, FLAGS.workdir)
    if summary:
        print("final evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
