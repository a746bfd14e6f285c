"""`mtvjax convert MODEL --src FILE --dst DIR ...`: released PyTorch weights → Orbax checkpoint.

  mtvjax convert 4dmot --src 4DMoT/mp_rank_00_model_states.pt --dst ckpt/4dmot \
      --mean ../shared/data/mtvcrafter_sample/mean.npy \
      --std ../shared/data/mtvcrafter_sample/std.npy
"""
from __future__ import annotations

from absl import flags

flags.DEFINE_string("src", None, "Released checkpoint: .pt (DeepSpeed or bare state dict) or "
                    ".safetensors.")
flags.DEFINE_string("dst", None, "New (or empty) folder for the Orbax checkpoint.")
flags.DEFINE_string("mean", None, "Normalisation mean .npy [24, 3] of the released model.")
flags.DEFINE_string("std", None, "Normalisation std .npy [24, 3].")
flags.DEFINE_string("variant", "released", "Variant of configs/4dmot.py the file must match; "
                    "empty: the released config with the model sizes read from the file.")
flags.mark_flags_as_required(["src", "dst", "mean", "std"])
FLAGS = flags.FLAGS

MODELS = ("4dmot",)


def main(argv):
    if len(argv) != 2 or argv[1] not in MODELS:
        got = " ".join(argv[1:]) or "nothing"
        raise SystemExit(f"mtvjax convert: expected one model name out of {', '.join(MODELS)}, "
                         f"got {got}")
    from mtvjax.checkpoint.convert_4dmot import convert_4dmot
    try:
        summary = convert_4dmot(FLAGS.src, FLAGS.dst, FLAGS.mean, FLAGS.std, FLAGS.variant or None)
    except (OSError, ValueError) as e:  # bad input files: one message, no traceback
        raise SystemExit(f"mtvjax convert: {e}") from e
    print(f"wrote {summary['dst']} (step 0): {summary['tensors']} tensors, "
          f"{summary['trainable_params']:,} trainable parameters, codebook {summary['codebook']}, "
          f"variant {summary['variant']}")
