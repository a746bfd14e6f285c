"""The `mtvjax` command: `mtvjax SUBCOMMAND [flags]`, one module per subcommand.

Each subcommand module under `mtvjax.commands` defines its absl flags at import time and a
`main(argv)`; only the chosen one is imported, so flags of different subcommands never clash.
`mtvjax.cli_runner.run_command` parses the flags, prints `--help`, keeps library logs quiet and
turns expected failures into one line (the traceback with `--verbose`).
"""
from __future__ import annotations

import importlib
import sys

from mtvjax.cli_runner import run_command, usage_exit

SUBCOMMANDS = {
    "train": "Train a model from a config (`--config configs/4dmot.py:tiny --workdir DIR`).",
    "convert": "PyTorch weights → Orbax (`4dmot|mvdit7b|mvdit17b|vae_cogvideox|vae_wan|umt5|clip|"
               "lpips|inception|i3d`).",
    "tokenize": "Motion file → 4DMoT tokens and reconstruction (`--checkpoint DIR --motion F --out O.npz`).",
    "eval": "Evaluate from a config (`configs/eval_4dmot.py:NAME` or `configs/eval_video.py:NAME`).",
    "animate": "Reference image + motion → video (`--config configs/animate.py:7b --ref-image I "
               "--motion F --out O.mp4`).",
    "generate": "Batch generation over a benchmark, resumable (`--config "
                "configs/generate.py:tiktok --config.entries=E --config.out=O [--evaluate]`).",
    "export": "MV-DiT training run → converted checkpoint, LoRA merged (`--workdir W --dst D`).",
    "viz": "Render motion (`motion --motion F [--recon F] --out O.mp4`) or code usage (`codebook`).",
}


def _usage() -> str:
    lines = ["usage: mtvjax SUBCOMMAND [flags]   (mtvjax SUBCOMMAND --help for its flags)", ""]
    lines += [f"  {name:<10} {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in SUBCOMMANDS:
        usage_exit("mtvjax", f"unknown subcommand {name!r}\n\n{_usage()}")
    module = importlib.import_module(f"mtvjax.commands.{name}")
    run_command(module.main, [f"mtvjax {name}"] + argv[2:], f"mtvjax {name}", module.__doc__)


if __name__ == "__main__":
    main()
