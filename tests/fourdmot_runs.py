"""Tiny 4DMoT runs for the resume tests: the config, a run stopped part-way, a copy to alter."""
import shutil

import pytest

from conftest import load_config, override

OVERRIDES = {
    "data.batch_size": 4, "data.frame_counts": (33,), "data.synthetic_sequences": 16,
    "data.synthetic_frames": (70, 90), "data.num_threads": 1, "train.log_every": 1,
    "train.checkpoint_every": 2, "train.eval_batches": 1,
}


def tiny_config(num_steps: int, **extra):
    """The tiny 4DMoT config with `OVERRIDES`, `num_steps` and `extra` ("section.key": value)."""
    return override(load_config("4dmot.py", "tiny"),
                    {**OVERRIDES, "train.num_steps": num_steps, **extra})


def run_fixtures(num_steps: int, stop_after: int):
    """Fixtures `stopped` (a run of `num_steps` stopped after `stop_after` steps, once per
    module) and `workdir` (a copy of it per test, to alter)."""

    @pytest.fixture(scope="module")
    def stopped(tmp_path_factory):
        from mtvjax.train.fourdmot_trainer import train
        workdir = tmp_path_factory.mktemp("stopped")
        train(tiny_config(num_steps, **{"train.stop_after_steps": stop_after}), str(workdir))
        return workdir

    @pytest.fixture
    def workdir(stopped, tmp_path):
        return shutil.copytree(stopped, tmp_path / "run")

    return stopped, workdir
