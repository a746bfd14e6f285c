"""`mtvjax viz motion|codebook ...`: skeleton videos and codebook-usage plots.

  mtvjax viz motion --motion clips.pkl [--recon tokens.npz] [--clip 0] [--background] --out o.mp4
  mtvjax viz codebook --checkpoint DIR --data clips.pkl [--frames 49] --out usage.png

With `--recon` a `mtvjax tokenize` output, the input segments of `--clip` and their
reconstructions are drawn side by side (over the driving video with `--background`); with
`--recon` another motion file, the two motions are drawn side by side.
"""
from __future__ import annotations

import numpy as np
from absl import flags

from mtvjax.commands.checkpoint_dir import checkpoint_dir
from mtvjax.errors import UsageError

flags.DEFINE_string("motion", None, "Motion file (.pkl, .npy, .npz).")
flags.DEFINE_string("recon", None, "A `mtvjax tokenize` .npz, or a second motion file.")
flags.DEFINE_integer("clip", 0, "Which clip of the motion file.")
flags.DEFINE_boolean("background", False, "Draw over the clip's driving video (when it has one).")
flags.DEFINE_string("checkpoint", None, "4DMoT checkpoint or training workdir (codebook).")
flags.DEFINE_string("data", None, "Motion file or folder to measure code usage on (codebook): "
                    "NLF pickles, joint arrays, SMPL parameters or BVH, like `mtvjax eval`.")
flags.DEFINE_integer("frames", 49, "Segment length for tokenising (codebook).")
flags.DEFINE_integer("fps", 30, "Frames per second of the written video.")
flags.DEFINE_string("out", None, "Output: .mp4 or .gif (motion), .png (codebook).")
flags.mark_flags_as_required(["out"])
FLAGS = flags.FLAGS


def _clip(path: str, index: int):
    from mtvjax.data.motion_files import load_clips
    clips, _ = load_clips(path)
    if not 0 <= index < len(clips):
        raise ValueError(f"{path}: has {len(clips)} clip(s), no clip {index}")
    return clips[index]


def _panels_from_tokens(path: str, clip_index: int):
    """Input and reconstruction of one clip from a tokenize output, segments in order."""
    with np.load(path, allow_pickle=False) as out:
        if "recon_mm" not in out.files:
            return None
        keep = out["clip"] == clip_index
        if not keep.any():
            raise ValueError(f"{path}: no segments of clip {clip_index}")
        frames = (out["start"][keep][:, None]
                  + np.arange(int(out["frames"])) * int(out["stride"])).reshape(-1)
        # the tail segment overlaps the one before it: draw each clip frame once, in order
        first = np.unique(frames, return_index=True)[1]
        return (out["motion_mm"][keep].reshape(-1, 24, 3)[first],
                out["recon_mm"][keep].reshape(-1, 24, 3)[first], frames[first])


def viz_motion():
    from mtvjax.viz.skeleton_video import read_video_frames, render_motion_panels
    if not FLAGS.motion:
        raise UsageError("viz motion needs --motion")
    clip = _clip(FLAGS.motion, FLAGS.clip)
    motions, titles, frame_ids = [clip.motion], ["input"], np.arange(len(clip.motion))
    if FLAGS.recon:
        tokens = _panels_from_tokens(FLAGS.recon, FLAGS.clip) if FLAGS.recon.endswith(".npz") else None
        if tokens is not None:
            motions, titles, frame_ids = [tokens[0], tokens[1]], ["input", "4DMoT reconstruction"], tokens[2]
        else:
            motions, titles = [clip.motion, _clip(FLAGS.recon, FLAGS.clip).motion], ["motion", "recon"]
    background = None
    if FLAGS.background:
        if not clip.video_path:
            raise ValueError(f"{clip.name}: no driving video to draw over")
        video = read_video_frames(clip.video_path, max_frames=int(frame_ids.max()) + 1)
        background = video[np.minimum(frame_ids, len(video) - 1)]
    path = render_motion_panels(motions, FLAGS.out, titles=titles, fps=FLAGS.fps,
                                background_frames=background)
    print(f"wrote {path}: {len(titles)} panel(s), {min(len(m) for m in motions)} frames")


def viz_codebook():
    from mtvjax.commands.motion_inputs import read_motion_files
    from mtvjax.evaluate.metrics import code_histogram
    from mtvjax.models.fourdmot.tokenizer import Tokenizer, segment_motion
    from mtvjax.viz.codebook_plot import plot_code_usage
    if not (FLAGS.checkpoint and FLAGS.data):
        raise UsageError("viz codebook needs --checkpoint and --data")
    tokenizer = Tokenizer(checkpoint_dir(FLAGS.checkpoint))
    clips, errors = read_motion_files(FLAGS.data)
    clips = [(name, motion) for name, motion in clips if len(motion) >= FLAGS.frames]
    if not clips:
        raise ValueError(f"{FLAGS.data}: no clip with {FLAGS.frames} frames"
                         + (f" ({len(errors)} unreadable file(s), first: {errors[0]})" if errors else ""))
    segments = np.concatenate([segment_motion(motion, FLAGS.frames, 1, name)[0]
                               for name, motion in clips])
    indices = tokenizer.tokenize(segments)["indices"]
    stats = plot_code_usage(np.asarray(code_histogram(indices, tokenizer.codebook_size)), FLAGS.out,
                            title=f"4DMoT code usage ({len(segments)} segments)")
    print(f"wrote {FLAGS.out}: active codes {stats['active_fraction']:.3f}, "
          f"perplexity {stats['perplexity']:.1f}")


def main(argv):
    actions = {"motion": viz_motion, "codebook": viz_codebook}
    if len(argv) != 2 or argv[1] not in actions:
        raise UsageError(f"expected one of {', '.join(actions)}, got {argv[1:]}")
    actions[argv[1]]()
