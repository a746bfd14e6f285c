"""The command line of a dataset build (`python -m data_pipeline.build|latents`): one `--config`
flag, no positional arguments, a summary printed once the dataset is built; failures go through
`mtvjax.cli_runner.run_command` (one line, non-zero exit)."""
from __future__ import annotations

import sys
from typing import Callable


def run_build_command(build: Callable, report: Callable, prog: str, doc: str,
                      config_help: str) -> None:
    """Defines `--config` (`config_help`), then runs `report(config, build(config))`."""
    from absl import flags
    from ml_collections import config_flags

    from mtvjax.cli_runner import run_command
    from mtvjax.errors import UsageError

    config_flags.DEFINE_config_file("config", None, config_help)
    flags.mark_flags_as_required(["config"])

    def run(argv):
        if len(argv) > 1:
            raise UsageError(f"unexpected arguments: {argv[1:]}")
        config = flags.FLAGS.config
        report(config, build(config))

    run_command(run, sys.argv, prog, doc)
