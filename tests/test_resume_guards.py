"""Resuming with a changed config: guarded keys refuse (one line), the flag accepts and records."""
import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from fourdmot_runs import OVERRIDES, run_fixtures, tiny_config
from mtvjax.checkpoint.manager import read_config
from mtvjax.train.fourdmot_trainer import train
from mtvjax.train.metric_writer import read_metrics
from mtvjax.train.resume_guard import ConfigChangeError, config_diff, guarded_keys

NUM_STEPS = 4


def _config(**extra):
    return tiny_config(NUM_STEPS, **extra)


stopped, workdir = run_fixtures(NUM_STEPS, 2)   # a checkpoint at step 2 of 4


def _changes(workdir):
    return [json.loads(line) for line in (workdir / "config_changes.jsonl").read_text().splitlines()]


def test_diff_separates_harmless_keys_from_guarded_ones():
    old = {"optim": {"learning_rate": 1e-4}, "train": {"num_steps": 10, "log_every": 5},
           "data": {"path": "a", "batch_size": 8}, "seed": 0, "resume": True}
    new = {"optim": {"learning_rate": 0.5}, "train": {"num_steps": 20, "log_every": 5,
                                                      "allow_config_change": True},
           "data": {"path": "b", "batch_size": 8}, "seed": 0, "resume": False, "quantizer": {}}
    diff = config_diff(old, new)
    assert diff == {"data.path": ("a", "b"), "optim.learning_rate": (1e-4, 0.5),
                    "train.num_steps": (10, 20)}
    assert guarded_keys(diff) == ["data.path", "optim.learning_rate"]


def test_keys_new_since_the_checkpoint_are_accepted_but_removed_keys_are_guarded():
    old = {"optim": {"trainable": "all", "b1": 0.9}}
    new = {"optim": {"trainable": "all", "lora": {"rank": 16, "targets": ["q"]}}}
    diff = config_diff(old, new)
    assert diff["optim.lora.rank"][0] == "<absent>" and "optim.b1" in diff
    assert guarded_keys(diff) == ["optim.b1"]


def test_changed_learning_rate_and_batch_size_refuse_to_resume(workdir):
    before = read_config(str(workdir / "checkpoints"))
    with pytest.raises(ConfigChangeError) as error:
        train(_config(**{"optim.learning_rate": 0.5, "data.batch_size": 8}), str(workdir))
    message = str(error.value)
    assert "\n" not in message and "allow_config_change" in message
    assert "optim.learning_rate: 0.001 → 0.5" in message and "data.batch_size: 4 → 8" in message
    assert read_config(str(workdir / "checkpoints")) == before
    assert not (workdir / "config_changes.jsonl").exists()


def test_allowed_change_resumes_and_is_recorded(workdir):
    train(_config(**{"optim.learning_rate": 0.5, "train.allow_config_change": True}),
          str(workdir))
    config, step = read_config(str(workdir / "checkpoints"))
    assert step == 4 and config["optim"]["learning_rate"] == 0.5
    [record] = _changes(workdir)
    assert record["step"] == 2 and record["guarded"] == ["optim.learning_rate"]
    assert record["changes"] == {"optim.learning_rate": {"old": 1e-3, "new": 0.5},
                                 "train.stop_after_steps": {"old": 2, "new": 0}}
    assert record["previous_config"]["optim"]["learning_rate"] == 1e-3   # the old config kept
    assert sorted(read_metrics(str(workdir))) == [1, 2, 3, 4]


def test_harmless_change_passes_and_is_recorded(workdir):
    train(_config(**{"train.num_steps": 6, "train.log_every": 2}), str(workdir))
    assert read_config(str(workdir / "checkpoints"))[1] == 6
    [record] = _changes(workdir)
    assert record["guarded"] == [] and set(record["changes"]) == {
        "train.num_steps", "train.log_every", "train.stop_after_steps"}


def test_train_command_refuses_in_one_line(workdir):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    flags.append(f"--config.train.num_steps={NUM_STEPS}")
    cmd = [sys.executable, "-m", "mtvjax.cli", "train", "--config",
           f"{REPO_ROOT / 'configs' / '4dmot.py'}:tiny", "--workdir", str(workdir),
           "--config.optim.learning_rate=0.5"] + flags
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("mtvjax train: ")
    assert "optim.learning_rate: 0.001 → 0.5" in out.stderr
