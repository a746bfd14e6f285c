"""Shared pieces of the `mtvjax animate` tests: the CLI runner and the config builder."""
import subprocess
import sys

from conftest import load_config

WINDOW = 17
FAST = ["--steps", "2", "--config.vae.tiling=False"]


def _cli(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "mtvjax.cli", "animate", *map(str, args)],
                         capture_output=True, text=True, timeout=900)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _config(variant, checkpoint_set, **fields):
    config = load_config("animate.py", variant)
    for name in ("mvdit", "tokenizer", "vae", "clip", "text_encoder", "text_tokenizer"):
        if name in checkpoint_set:
            config.checkpoints[name] = checkpoint_set[name]
    config.dtype, config.vae.dtype, config.vae.tiling = "float32", "float32", False
    config.long.window, config.video.resolution = WINDOW, (64, 64)
    config.sampling.steps = 2
    for path, value in fields.items():
        node, *rest = path.split("__")
        if rest:
            config[node][rest[0]] = value
        else:
            config[node] = value
    return config


def write_random_sets(root) -> dict:
    """Tiny random checkpoint sets of both families under `root` (the 17B without umT5)."""
    from mtvjax.tools import random_checkpoints
    return {"7b": random_checkpoints.write_set(str(root / "7b"), "cogvideox", WINDOW),
            "17b": random_checkpoints.write_set(str(root / "17b"), "wan", WINDOW,
                                                text_encoder=False)}
