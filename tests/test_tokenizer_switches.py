"""The paper's tokenizer ablations as config switches: no quantisation, no differential motion,
"3D quantisation" over (t, x, y). Each trains and evaluates through the normal code paths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from mtvjax.data.synthetic_motion import SyntheticMotionSource
from mtvjax.evaluate.tokenizer_eval import evaluate
from mtvjax.models.fourdmot import forward
from mtvjax.train.fourdmot_trainer import train

MOTION = jnp.asarray(SyntheticMotionSource(2, (33, 33), seed=4)[0].motion[None])
STATS = {"mean": jnp.asarray(MOTION[0].mean(0)), "std": jnp.asarray(MOTION[0].std(0) + 1.0)}


@pytest.mark.parametrize("differential", [False, True])
def test_differential_motion_zeroes_the_first_frame_and_inverts(differential):
    sw = forward.Switches(differential=differential)
    x, first = forward.model_input(MOTION, STATS, sw)
    assert bool(jnp.all(x[:, 0] == 0)) == differential
    np.testing.assert_allclose(forward.model_output_mm(x, first, STATS, sw), MOTION, rtol=1e-5,
                               atol=1e-2)


def test_depth_is_dropped_for_3d_quantisation():
    sw = forward.Switches(coord_dim=2)
    x, first = forward.model_input(MOTION, STATS, sw)
    assert x.shape[-1] == 2
    np.testing.assert_allclose(forward.model_output_mm(x, first, STATS, sw), MOTION[..., :2],
                               rtol=1e-5, atol=1e-2)


def test_quantizer_bypass_passes_continuous_tokens():
    z = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 24, 8))
    q, idx, commit = forward.quantize_tokens(jnp.zeros((4, 8)), z, forward.Switches(quantize=False))
    np.testing.assert_array_equal(q, z)
    assert bool(jnp.all(idx == -1)) and float(commit) == 0.0
    q, idx, _ = forward.quantize_tokens(jnp.zeros((4, 8)), z, forward.Switches(quantize=True))
    assert bool(jnp.all(q == 0)) and bool(jnp.all(idx >= 0))


def test_ablated_tokenizer_trains_and_evaluates(tmp_path):
    config = load_config("4dmot.py", "tiny")
    config.quantizer.enabled = False
    config.model.coord_dim = 2
    config.normalization.differential = True
    config.data.update(batch_size=4, frame_counts=(33,), synthetic_sequences=8,
                       synthetic_frames=(40, 60), num_threads=1)
    config.train.update(num_steps=3, log_every=1, checkpoint_every=3, eval_batches=1)
    state, summary = train(config, str(tmp_path))
    assert not bool(state.quantizer["initialized"])          # the codebook was never used
    assert state.params["encoder"]["conv_in"]["kernel"].shape[2] == 2
    assert np.isfinite(summary["mpjpe_mm"])
    eval_config = load_config("eval_4dmot.py", "synthetic")
    eval_config.checkpoint = str(tmp_path / "checkpoints")
    eval_config.datasets[0]["sequences"] = 2
    report = evaluate(eval_config)["datasets"]["synthetic"]
    assert np.isfinite(report["mpjpe_mm"]) and "perplexity" not in report
