"""A broken newest checkpoint: resume falls back to the newest intact step, warns, keeps training."""
import json
import os

import numpy as np
import pytest

from fourdmot_runs import run_fixtures, tiny_config
from mtvjax.checkpoint.manager import Checkpointer, CheckpointError
from mtvjax.data.loader import make_iterator, make_source
from mtvjax.train.fourdmot_trainer import FourDMoTTrainer, train
from mtvjax.train.metric_writer import read_metrics

NUM_STEPS = 6


def _config(**extra):
    return tiny_config(NUM_STEPS, **extra)


def _truncate_array(step_dir):
    arrays = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
              for name in names if os.sep + "d" + os.sep in os.path.join(root, name)]
    with open(max(arrays, key=os.path.getsize), "r+b") as f:
        f.truncate(1000)


def _empty_metadata(step_dir):
    (step_dir / "state" / "_METADATA").write_text("")


def _truncate_iterator(step_dir):
    [state] = (step_dir / "data").glob("process_*.json")
    state.write_text(state.read_text()[:5])


CORRUPTIONS = {"array": _truncate_array, "metadata": _empty_metadata,
               "iterator": _truncate_iterator}


stopped, workdir = run_fixtures(NUM_STEPS, 4)   # checkpoints at steps 2 and 4 of 6


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_restore_falls_back_past_a_broken_step(workdir, corruption, capsys):
    CORRUPTIONS[corruption](workdir / "checkpoints" / "4")
    config = _config()
    trainer = FourDMoTTrainer(config)
    source, _ = make_source(config.data, 33)
    data_iter = make_iterator(trainer.batches(source, 0, augment=True), 1, 1)
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    state, step = checkpointer.restore_latest(trainer.abstract_state(), data_iter)
    assert step == 2 and int(state.step) == 2
    warning = capsys.readouterr().err
    assert "checkpoint step 4" in warning and "resuming from step 2" in warning
    assert len(warning.strip().splitlines()) == 1
    assert checkpointer.latest_step() == 2
    [kept] = [name for name in os.listdir(workdir / "checkpoints") if name.startswith("corrupt")]
    assert kept.startswith("corrupt_step_4_")        # the broken step is kept, not deleted
    checkpointer.close()


def test_training_continues_after_the_fallback(workdir, capsys):
    logged = read_metrics(str(workdir))
    _truncate_array(workdir / "checkpoints" / "4")
    train(_config(), str(workdir))
    assert "checkpoint step 4" in capsys.readouterr().err
    assert sorted(os.listdir(workdir / "checkpoints"))[:3] == ["2", "4", "6"]   # 4 saved again
    rows = read_metrics(str(workdir))
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    for step in (3, 4):        # the steps after the fallback retrace the interrupted run
        np.testing.assert_allclose(rows[step]["loss"], logged[step]["loss"], rtol=1e-5)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    parsed = [json.loads(line, parse_constant=refuse) for line in lines]
    train_steps = [row["step"] for row in parsed if row["split"] == "train"]
    assert train_steps == sorted(set(train_steps))           # each step once
    assert [row["step"] for row in parsed if row["split"] == "resume"] == [2]


def test_no_intact_step_is_one_line_error(workdir):
    _truncate_array(workdir / "checkpoints" / "4")
    _empty_metadata(workdir / "checkpoints" / "2")
    with pytest.raises(CheckpointError) as error:
        train(_config(), str(workdir))
    message = str(error.value)
    assert "\n" not in message and "step 4" in message and "step 2" in message
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]   # nothing moved
