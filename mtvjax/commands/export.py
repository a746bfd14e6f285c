"""`mtvjax export --workdir W --dst D [--step N]`: an MV-DiT training run → converted checkpoint.

  mtvjax export --workdir runs/mvdit7b_lora --dst ckpt/mvdit7b_tuned
  mtvjax animate --config configs/animate.py:7b --config.checkpoints.mvdit=ckpt/mvdit7b_tuned ...

Writes the run's parameters (LoRA adapters merged into the base when the run trained
`optim.trainable="lora"`) in the format `mtvjax convert mvdit7b|mvdit17b` writes for its family.
`--dst` must be new, empty, or an earlier export (replaced once the new one is complete).
"""
from __future__ import annotations

from absl import flags

from mtvjax.commands.checkpoint_dir import checkpoint_dir
from mtvjax.errors import UsageError

flags.DEFINE_string("workdir", None, "An `mtvjax train` MV-DiT workdir (or its checkpoints/).")
flags.DEFINE_string("dst", None, "New, empty or earlier-export folder for the checkpoint.")
flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
flags.mark_flags_as_required(["workdir", "dst"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    from mtvjax.train.mvdit_export import export_run
    s = export_run(checkpoint_dir(FLAGS.workdir), FLAGS.dst, FLAGS.step)
    merged = (f"LoRA merged ({s['lora']['kernels']} kernels, rank {s['lora']['rank']}, alpha "
              f"{s['lora']['alpha']})" if s["lora"] else "no LoRA")
    print(f"wrote {s['dst']} (step 0): {s['family']} parameters of training step {s['step']}, "
          f"{merged}")
