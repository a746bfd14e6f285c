"""`mtvjax animate --config configs/animate.py:7b|17b --ref-image IMG --motion FILE --out OUT.mp4`.

Optional: `--prompt TEXT` (17B), `--seed N --steps 50 --motion-cfg 3.0 --text-cfg 6.0
--resolution 512x512 --frames 49 --panel`; each overrides the config field of the same meaning
(any other field with `--config.key=value`). Writes OUT.mp4, OUT.json (report with seconds per
sampling step) and, with `--panel`, OUT_panel.mp4.
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mtvjax.errors import UsageError

from mtvjax.models.mvdit import registry

config_flags.DEFINE_config_file("config", None, "Animate config: configs/animate.py:7b or :17b.")
flags.DEFINE_string("ref-image", None, "Reference character image (PNG/JPEG/...).")
flags.DEFINE_string("motion", None, "Driving motion: .pkl (MTVCrafter/NLF), .npy/.npz "
                    "[frames, 24, 3] mm, or a folder of them.")
flags.DEFINE_string("out", None, "Output video (.mp4).")
flags.DEFINE_string("prompt", None, "Text prompt (17B only).")
flags.DEFINE_integer("seed", None, "Random seed (config: seed).")
flags.DEFINE_integer("steps", None, "Sampling steps (config: sampling.steps).")
flags.DEFINE_float("motion-cfg", None, "Motion guidance scale (config: sampling.motion_cfg).")
flags.DEFINE_float("text-cfg", None, "Text guidance scale, 17B (config: sampling.text_cfg).")
flags.DEFINE_string("resolution", None, "HxW, e.g. 512x512 (config: video.resolution; "
                    "0x0 = the 17B's aspect bucket).")
flags.DEFINE_integer("frames", None, "Output frames (config: video.frames); more than "
                     "long.window generates a long video window by window.")
flags.DEFINE_boolean("panel", None, "Also write the side-by-side panel OUT_panel.mp4.")
flags.DEFINE_boolean("progress", True, "Progress bar over sampling steps.")
flags.mark_flags_as_required(["ref-image", "motion", "out"])
FLAGS = flags.FLAGS


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise UsageError(f"--resolution {text!r}: expected HxW, e.g. 512x512") from e
    return h, w


def apply_flags(config) -> None:
    """Command-line shorthands → config fields."""
    overrides = {"seed": ("seed",), "steps": ("sampling", "steps"),
                 "motion-cfg": ("sampling", "motion_cfg"), "text-cfg": ("sampling", "text_cfg"),
                 "frames": ("video", "frames"), "panel": ("panel", "enabled"),
                 "prompt": ("prompt",)}
    for flag, path in overrides.items():
        value = FLAGS[flag].value
        if value is None:
            continue
        if flag == "prompt" and not registry.family(config.family).HAS_TEXT:
            raise UsageError("--prompt: the 7B has no text input (use configs/animate.py:17b)")
        node = config
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    if FLAGS.resolution is not None:
        config.video.resolution = parse_resolution(FLAGS.resolution)


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise UsageError("--config is required (configs/animate.py:7b or :17b)")
    from mtvjax.sample.animate import animate
    from mtvjax.sample.animator_common import attention_kernel
    config = FLAGS.config
    apply_flags(config)
    try:
        attention_kernel(config)           # before any checkpoint is read
    except ValueError as e:
        raise UsageError(str(e)) from None
    report = animate(config, FLAGS["ref-image"].value, FLAGS.motion, FLAGS.out,
                     progress=FLAGS.progress)
    print(f"wrote {report['out']}: {report['frames']} frames {report['height']}x"
          f"{report['width']} in {report['windows']} window(s); "
          f"{report['seconds_per_step']:.3f} s per sampling step "
          f"(compile {report['compile_seconds']:.1f} s)")
    if "panel" in report:
        print(f"panel: {report['panel']}")
