"""`mtvjax viz motion|codebook ...`: skeleton videos and codebook-usage plots.

  mtvjax viz motion --motion clips.pkl [--recon tokens.npz] [--clip 0] [--background] --out o.mp4
  mtvjax viz codebook --checkpoint DIR --data clips.pkl [--frames 49] --out usage.png

With `--recon` a `mtvjax tokenize` output, the input segments of `--clip` and their
reconstructions are drawn side by side (over the driving video with `--background`); with
`--recon` another motion file, the two motions are drawn side by side.
"""
from __future__ import annotations

import numpy as np
from absl import flags, logging

flags.DEFINE_string("motion", None, "Motion file (.pkl, .npy, .npz).")
flags.DEFINE_string("recon", None, "A `mtvjax tokenize` .npz, or a second motion file.")
flags.DEFINE_integer("clip", 0, "Which clip of the motion file.")
flags.DEFINE_boolean("background", False, "Draw over the clip's driving video (when it has one).")
flags.DEFINE_string("checkpoint", None, "4DMoT checkpoint (codebook).")
flags.DEFINE_string("data", None, "Motion file or folder to measure code usage on (codebook).")
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
        frames = (out["start"][keep][:, None] + np.arange(int(out["frames"])) * int(out["stride"]))
        return (out["motion_mm"][keep].reshape(-1, 24, 3), out["recon_mm"][keep].reshape(-1, 24, 3),
                frames.reshape(-1))


def viz_motion():
    from mtvjax.viz.skeleton_video import read_video_frames, render_motion_panels
    if not FLAGS.motion:
        raise ValueError("viz motion needs --motion")
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
    from mtvjax.data.motion_files import load_clips
    from mtvjax.evaluate.metrics import code_histogram
    from mtvjax.models.fourdmot.tokenizer import Tokenizer, segment_motion
    from mtvjax.viz.codebook_plot import plot_code_usage
    if not (FLAGS.checkpoint and FLAGS.data):
        raise ValueError("viz codebook needs --checkpoint and --data")
    tokenizer = Tokenizer(FLAGS.checkpoint)
    clips, _ = load_clips(FLAGS.data, min_frames=FLAGS.frames, skip_bad=True)
    if not clips:
        raise ValueError(f"{FLAGS.data}: no clip with {FLAGS.frames} frames")
    segments = np.concatenate([segment_motion(c.motion, FLAGS.frames, 1, c.name)[0] for c in clips])
    indices = tokenizer.tokenize(segments)["indices"]
    stats = plot_code_usage(np.asarray(code_histogram(indices, tokenizer.codebook_size)), FLAGS.out,
                            title=f"4DMoT code usage ({len(segments)} segments)")
    print(f"wrote {FLAGS.out}: active codes {stats['active_fraction']:.3f}, "
          f"perplexity {stats['perplexity']:.1f}")


def main(argv):
    logging.set_verbosity(logging.WARNING)
    actions = {"motion": viz_motion, "codebook": viz_codebook}
    if len(argv) != 2 or argv[1] not in actions:
        raise SystemExit(f"mtvjax viz: expected one of {', '.join(actions)}, got {argv[1:]}")
    try:
        actions[argv[1]]()
    except (OSError, ValueError) as e:
        raise SystemExit(f"mtvjax viz {argv[1]}: {e}") from e
