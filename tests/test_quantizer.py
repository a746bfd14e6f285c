"""EMA quantizer: nearest codes, straight-through gradients, init, EMA, dead-code reset."""
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.models.fourdmot import quantizer as vq

SETTINGS = vq.QuantizerSettings(decay=0.9, dead_threshold=1.0, reset_every=2, init_noise=0.01)


def _state(codebook, counts=None):
    codebook = jnp.asarray(codebook, jnp.float32)
    counts = jnp.ones(codebook.shape[0]) if counts is None else jnp.asarray(counts, jnp.float32)
    return {"codebook": codebook, "ema_sum": codebook * counts[:, None], "ema_count": counts,
            "initialized": jnp.array(True), "step": jnp.array(0, jnp.int32),
            "ever_used": jnp.zeros(codebook.shape[0], bool)}


class QuantizeTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_nearest_code_commitment_and_straight_through(self):
        codebook = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
        z = jnp.array([[[1.0, 1.0], [9.0, 2.0], [-1.0, 8.0]]])
        q, idx, commit = self.variant(vq.quantize)(codebook, z)
        np.testing.assert_array_equal(idx, [[0, 1, 2]])
        chex.assert_trees_all_close(q, codebook[idx])
        # mean over all 6 numbers of (z - q)^2: (1+1+1+4+1+4) / 6
        chex.assert_trees_all_close(commit, 12.0 / 6.0)
        grad = jax.grad(lambda z: jnp.sum(vq.quantize(codebook, z)[0] * 3.0))(z)
        chex.assert_trees_all_close(grad, jnp.full_like(z, 3.0))


def test_initialization_from_batch_then_noop():
    state = jax.tree.map(jnp.zeros_like, _state(jnp.zeros((4, 3))))
    state["initialized"] = jnp.array(False)
    z = jnp.arange(18.0).reshape(6, 3)
    init = vq.initialize_from_batch(state, z, jax.random.PRNGKey(0), SETTINGS)
    assert bool(init["initialized"])
    rows = {tuple(r) for r in np.asarray(z)}
    assert all(tuple(r) in rows for r in np.asarray(init["codebook"]))      # batch vectors
    assert len({tuple(r) for r in np.asarray(init["codebook"])}) == 4       # distinct ones
    chex.assert_trees_all_close(init["ema_sum"], init["codebook"])
    chex.assert_trees_all_close(init["ema_count"], jnp.ones(4))
    again = vq.initialize_from_batch(init, z + 100, jax.random.PRNGKey(1), SETTINGS)
    chex.assert_trees_all_close(again, init)


def test_initialization_tiles_with_noise_when_batch_is_small():
    state = jax.tree.map(jnp.zeros_like, _state(jnp.zeros((8, 2))))
    state["initialized"] = jnp.array(False)
    z = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    init = vq.initialize_from_batch(state, z, jax.random.PRNGKey(0), SETTINGS)
    codes = np.asarray(init["codebook"])
    nearest = np.abs(codes[:, None] - np.asarray(z)[None]).sum(-1).min(1)
    assert np.all(nearest < 0.1) and np.all(nearest > 0)          # noisy copies of the batch
    assert len({tuple(r) for r in codes}) == 8


def test_ema_update_on_hand_made_inputs():
    state = _state([[0.0, 0.0], [10.0, 10.0]], counts=[2.0, 1.0])
    z = jnp.array([[1.0, 1.0], [3.0, 3.0], [11.0, 9.0]])
    new = vq.ema_update(state, z, jnp.array([0, 0, 1]), SETTINGS)
    # counts: 0.9*2 + 0.1*2 = 2.0, 0.9*1 + 0.1*1 = 1.0
    chex.assert_trees_all_close(new["ema_count"], jnp.array([2.0, 1.0]))
    # sums: 0.9*[0,0] + 0.1*[4,4]; 0.9*[10,10] + 0.1*[11,9]
    chex.assert_trees_all_close(new["ema_sum"], jnp.array([[0.4, 0.4], [10.1, 9.9]]), rtol=1e-6)
    chex.assert_trees_all_close(new["codebook"], jnp.array([[0.2, 0.2], [10.1, 9.9]]), rtol=1e-6)
    assert int(new["step"]) == 1


def test_dead_codes_are_reset_with_reseeded_statistics_every_n_steps():
    state = _state([[0.0, 0.0], [50.0, 50.0], [-50.0, -50.0]], counts=[5.0, 1.05, 5.0])
    z = jnp.array([[1.0, 0.0], [0.0, 1.0], [-49.0, -50.0], [-50.0, -49.0]])
    idx = vq.nearest_codes(state["codebook"], z)
    # Update 1 (step 1, not a reset step): code 1 decays to 0.945 < 1 and is dead, but stays.
    s1, m1 = vq.update_state(state, z, idx, jax.random.PRNGKey(0), SETTINGS)
    assert int(m1["dead_codes"]) == 1 and int(m1["codes_reset"]) == 0
    chex.assert_trees_all_close(s1["codebook"][1], jnp.array([50.0, 50.0]), rtol=1e-6)
    # Update 2 (step 2 = reset_every): code 1 is moved onto one of the batch vectors and its
    # sum/count re-seeded to that one vector; live codes are untouched by the reset.
    s2, m2 = vq.update_state(s1, z, idx, jax.random.PRNGKey(0), SETTINGS)
    assert int(m2["codes_reset"]) == 1
    reset = np.asarray(s2["codebook"][1])
    assert any(np.allclose(reset, row, atol=1e-3) for row in np.asarray(z))
    chex.assert_trees_all_close(s2["ema_count"][1], 1.0)
    chex.assert_trees_all_close(s2["ema_sum"][1], s2["codebook"][1])
    expected_live = vq.ema_update(s1, z, idx, SETTINGS)
    chex.assert_trees_all_close(s2["codebook"][jnp.array([0, 2])],
                                expected_live["codebook"][jnp.array([0, 2])])


_MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np
    from mtvjax.config import load_config
    from mtvjax.train.fourdmot_trainer import FourDMoTTrainer
    from mtvjax.data.loader import make_batches
    from mtvjax.data.synthetic_motion import SyntheticMotionSource
    from mtvjax.data.stats import compute_stats
    assert jax.device_count() == 4, jax.devices()
    config = load_config(sys.argv[1] + ":tiny")
    config.data.batch_size, config.data.frame_counts = 4, (33,)
    config.quantizer.reset_every = 2
    source = SyntheticMotionSource(8, (40, 60))
    stats = compute_stats(source[i].motion for i in range(8))
    batches = make_batches(source, 4, (33,), (1,), seed=0)
    result = {}
    for name, devices in (("single", jax.devices()[:1]), ("four", jax.devices())):
        config.mesh = {"data": len(devices)}
        trainer = FourDMoTTrainer(config, devices)
        state = trainer.init_state(stats)
        for step in range(3):
            state, _ = trainer.train_step(state, trainer.device_batch(batches[step]),
                                          jax.random.fold_in(state.rng, step))
        shards = [np.asarray(s.data) for s in state.quantizer["codebook"].addressable_shards]
        result[name] = {"num_shards": len(shards),
                        "identical": all(np.array_equal(shards[0], s) for s in shards),
                        "codebook": shards[0].tolist(),
                        "count": np.asarray(state.quantizer["ema_count"]).tolist()}
    print("RESULT" + json.dumps(result))
""")


def test_codebook_is_identical_across_four_data_parallel_devices(tmp_path):
    from conftest import REPO_ROOT
    from conftest import simulated_devices_env
    env = simulated_devices_env(4)
    out = subprocess.run([sys.executable, "-c", _MULTI_DEVICE_SCRIPT,
                          str(REPO_ROOT / "configs" / "4dmot.py")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json
    result = json.loads(out.stdout.split("RESULT")[-1])
    assert result["four"]["num_shards"] == 4 and result["four"]["identical"]
    # Statistics are reduced over the global batch: 4 devices give the 1-device codebook.
    np.testing.assert_allclose(result["four"]["codebook"], result["single"]["codebook"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result["four"]["count"], result["single"]["count"], rtol=1e-5)
