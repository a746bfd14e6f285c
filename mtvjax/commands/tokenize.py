"""`mtvjax tokenize --checkpoint DIR --motion FILE [--frames 49 --stride 1] --out OUT.npz`.

Writes, for every segment of every clip in FILE (`.pkl` via the restricted loader, `.npy`,
`.npz`): `indices [segments, latent_frames, 24]` (int32), the reconstruction in millimetres
`recon_mm [segments, frames, 24, 3]`, the input segments `motion_mm`, per-segment MPJPE
`mpjpe_mm`, the clip of each segment `clip` with its `start` frame and the clip names `clip_names`;
with `--quantized` also the quantised features `[segments, latent_frames, 24, code_dim]`.
"""
from __future__ import annotations

import os

import numpy as np
from absl import flags

from mtvjax.commands.checkpoint_dir import checkpoint_dir
from mtvjax.commands.results import NonFiniteResult, non_finite_numbers
from mtvjax.errors import UsageError

flags.DEFINE_string("checkpoint", None, "4DMoT checkpoint folder (trained or converted), or a "
                    "training workdir (its checkpoints/).")
flags.DEFINE_string("motion", None, "Motion file: .pkl (MTVCrafter/NLF), .npy or .npz [frames, 24, 3].")
flags.DEFINE_string("out", None, "Output .npz.")
flags.DEFINE_integer("frames", 49, "Frames per segment (8k or 8k + 1).", lower_bound=1)
flags.DEFINE_integer("stride", 1, "Read every stride-th frame.", lower_bound=1)
flags.DEFINE_boolean("quantized", False, "Also write the quantised features.")
flags.DEFINE_integer("batch_size", 8, "Segments per jitted call.", lower_bound=1)
flags.mark_flags_as_required(["checkpoint", "motion", "out"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    from mtvjax.data.motion_files import load_clips
    from mtvjax.models.fourdmot.tokenizer import Tokenizer, segment_motion

    clips, _ = load_clips(FLAGS.motion)
    tokenizer = Tokenizer(checkpoint_dir(FLAGS.checkpoint), batch_size=FLAGS.batch_size)
    pieces = [segment_motion(c.motion, FLAGS.frames, FLAGS.stride, c.name) for c in clips]
    tokenizer.check_frames(FLAGS.frames)
    segments = np.concatenate([p[0] for p in pieces])
    out = tokenizer.tokenize(segments)
    if not FLAGS.quantized:
        out.pop("quantized")
    bad = non_finite_numbers({k: np.asarray(out[k]) for k in ("recon_mm", "mpjpe_mm")})
    if bad:
        raise NonFiniteResult(f"{FLAGS.checkpoint}: the reconstruction of {FLAGS.motion} is not "
                              f"finite ({', '.join(bad)}); nothing written")
    out.update(motion_mm=segments, start=np.concatenate([p[1] for p in pieces]),
               clip=np.concatenate([np.full(len(p[1]), i, np.int32) for i, p in enumerate(pieces)]),
               clip_names=np.array([c.name for c in clips]), frames=np.int32(FLAGS.frames),
               stride=np.int32(FLAGS.stride))
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    np.savez(FLAGS.out, **out)
    print(f"wrote {FLAGS.out}: {len(segments)} segments from {len(clips)} clip(s), tokens "
          f"{out['indices'].shape}, mean MPJPE {out['mpjpe_mm'].mean():.1f} mm")
