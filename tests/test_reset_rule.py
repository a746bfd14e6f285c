"""Dead-code reset rules: the paper's (every dead code) and the released trainer's (only codes
never alive at a non-reset step), on hand-made states and through the real train step."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from fourdmot_runs import tiny_config
from mtvjax.errors import ConfigError
from mtvjax.models.fourdmot import quantizer as vq
from mtvjax.models.fourdmot.build import quantizer_settings

# Codes: 0 is fed every step; 1 starts at count 1.2, so it is alive after update 1 (1.08) and
# dead from update 2 on (0.972, ...); 2 starts at 0.5 and is never alive. Resets at 3, 6, ...
COUNTS = [5.0, 1.2, 0.5]
CODES = [[0.0, 0.0], [50.0, 50.0], [-50.0, -50.0]]
Z = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
TO_CODE_0 = jnp.zeros(4, jnp.int32)        # every vector assigned to code 0, whatever moves


def _settings(rule):
    return vq.QuantizerSettings(decay=0.9, dead_threshold=1.0, reset_every=3, init_noise=0.01,
                                reset_rule=rule)


def _state():
    codebook, counts = jnp.array(CODES), jnp.array(COUNTS)
    return {"codebook": codebook, "ema_sum": codebook * counts[:, None], "ema_count": counts,
            "initialized": jnp.array(True), "step": jnp.array(0, jnp.int32),
            "ever_used": jnp.zeros(3, bool)}


def _run(rule, updates):
    """States and metrics after each of `updates` updates (index 0: the initial state)."""
    states, metrics = [_state()], [None]
    update = jax.jit(lambda s, k: vq.update_state(s, Z, TO_CODE_0, k, _settings(rule)))
    for i in range(updates):
        state, m = update(states[-1], jax.random.PRNGKey(i))
        states.append(state)
        metrics.append({k: int(v) for k, v in m.items()})
    return states, metrics


def _moved(states, update, code):
    return not np.allclose(states[update]["codebook"][code], states[update - 1]["codebook"][code],
                           rtol=1e-5)


def test_released_never_resets_a_code_that_was_alive_once():
    states, metrics = _run("released", 9)
    assert states[1]["ever_used"].tolist() == [True, True, False]
    assert float(states[3]["ema_count"][1]) < 1.0                  # dead at the reset step...
    for update in (3, 6, 9):
        assert not _moved(states, update, 1)                       # ...and never reset
        assert _moved(states, update, 2)                           # the never-alive code is
        assert metrics[update]["codes_reset"] == 1
        assert metrics[update]["dead_codes"] == 2
    # Re-seeded at a reset step, code 2 has count 1 there, but the mask only grows after
    # non-reset updates: unused afterwards, it stays outside and is reset again.
    assert float(states[3]["ema_count"][2]) == pytest.approx(1.0)
    assert not bool(states[9]["ever_used"][2])
    assert metrics[9]["ever_used"] == 2


def test_paper_resets_every_dead_code_including_one_that_was_alive():
    states, metrics = _run("paper", 6)
    for update in (3, 6):
        assert _moved(states, update, 1) and _moved(states, update, 2)
        assert metrics[update]["codes_reset"] == 2
        np.testing.assert_allclose(states[update]["ema_count"][1:], [1.0, 1.0], rtol=1e-6)
    live = vq.ema_update(states[5], Z, TO_CODE_0, _settings("paper"))["codebook"][0]
    np.testing.assert_allclose(states[6]["codebook"][0], live, rtol=1e-6)   # live code kept


@pytest.mark.parametrize("rule", vq.RESET_RULES)
def test_nothing_is_reset_between_reset_steps(rule):
    states, metrics = _run(rule, 8)
    for update in (1, 2, 4, 5, 7, 8):
        assert metrics[update]["codes_reset"] == 0
        assert not _moved(states, update, 1) and not _moved(states, update, 2)
        # dead codes only decay: count and sum shrink together, the code stays put
        np.testing.assert_allclose(states[update]["ema_count"][1:],
                                   0.9 * np.asarray(states[update - 1]["ema_count"][1:]),
                                   rtol=1e-6)


def test_config_rejects_an_unknown_rule_and_variants_pick_theirs(tmp_path):
    assert load_config("4dmot.py", "paper").quantizer.reset_rule == "paper"
    assert load_config("4dmot.py", "released").quantizer.reset_rule == "released"
    config = tiny_config(2, **{"quantizer.reset_rule": "official"})
    with pytest.raises(ConfigError, match=r"quantizer\.reset_rule='official'.*paper, released"):
        quantizer_settings(config)
    from mtvjax.train.fourdmot_trainer import train
    with pytest.raises(ConfigError, match=r"quantizer\.reset_rule"):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()                  # refused before anything is written


def _drop_ever_used(step_dir):
    """Makes a step look written before `ever_used` existed: its tree metadata lacks the entry."""
    path = os.path.join(step_dir, "state", "_METADATA")
    with open(path) as f:
        metadata = json.load(f)
    tree = metadata["tree_metadata"]
    dropped = [k for k in tree if "ever_used" in k]
    assert len(dropped) == 1, list(tree)
    del tree[dropped[0]]
    with open(path, "w") as f:
        json.dump(metadata, f)


def test_released_training_runs_and_resumes_from_a_checkpoint_without_the_mask(tmp_path):
    from mtvjax.models.fourdmot.tokenizer import Tokenizer
    from mtvjax.train.fourdmot_trainer import train
    from mtvjax.train.metric_writer import read_metrics
    # One clip gives fewer tokens (216) than codes (256): the codebook is filled with noisy
    # copies too, and the copies no token picks are never alive.
    extra = {"quantizer.reset_rule": "released", "quantizer.reset_every": 2, "data.batch_size": 1}
    workdir = tmp_path / "run"
    state, _ = train(tiny_config(4, **extra, **{"train.stop_after_steps": 2}), str(workdir))
    rows = read_metrics(str(workdir))
    mask = np.asarray(state.quantizer["ever_used"])
    assert mask.shape == (256,) and mask.dtype == bool
    # Update 2 is a reset step: the mask of update 1 is kept as it is, and only the dead codes
    # outside it are reset, not those that were alive at update 1.
    assert 0 < rows[2]["ever_used"] == mask.sum() == rows[1]["ever_used"] < 256
    assert 0 < rows[2]["codes_reset"] < rows[2]["dead_codes"]

    legacy = tmp_path / "legacy"
    shutil.copytree(workdir, legacy)
    _drop_ever_used(str(legacy / "checkpoints" / "2"))
    tokenizer = Tokenizer(str(legacy / "checkpoints"))
    assert not np.asarray(tokenizer.state.quantizer["ever_used"]).any()     # empty mask
    np.testing.assert_array_equal(tokenizer.state.quantizer["codebook"],
                                  state.quantizer["codebook"])
    resumed, _ = train(tiny_config(4, **extra), str(legacy))
    assert int(resumed.step) == 4
    assert np.asarray(resumed.quantizer["ever_used"]).any()
