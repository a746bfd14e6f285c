"""A `--checkpoint` argument: a checkpoint folder, or a training workdir holding `checkpoints/`."""
from __future__ import annotations

import os

WORKDIR_CHECKPOINTS = "checkpoints"     # where `mtvjax train` writes them (mtvjax.train.loop)


def checkpoint_dir(path: str) -> str:
    """`path`, or `path/checkpoints` when `path` is a training workdir without steps of its own."""
    inner = os.path.join(path, WORKDIR_CHECKPOINTS)
    if not os.path.isdir(inner):
        return path
    own_steps = any(name.isdigit() for name in os.listdir(path))
    return path if own_steps else inner
