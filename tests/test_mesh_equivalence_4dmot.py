"""One 4DMoT training step on 8 simulated devices gives the single-device result on every mesh.

4DMoT (48 M parameters) keeps its parameters replicated and shards the batch over the `data`
and `fsdp` mesh axes (`batch -> (data, fsdp)`); the quantizer statistics are reduced over the
global batch, so loss, parameters and codebook must not depend on the mesh.
"""
import json
import subprocess
import sys
import textwrap

import numpy as np

from conftest import REPO_ROOT

MESHES = ((8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2))

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from mtvjax.config import load_config
    from mtvjax.data.loader import make_batches
    from mtvjax.data.stats import compute_stats
    from mtvjax.data.synthetic_motion import SyntheticMotionSource
    from mtvjax.train.fourdmot_trainer import FourDMoTTrainer
    assert jax.device_count() == 8
    config = load_config(sys.argv[1] + ":tiny")
    config.data.batch_size, config.data.frame_counts = 8, (33,)
    config.quantizer.reset_every = 1            # exercise the dead-code reset in the step
    config.sharding_rules = (("batch", ("data", "fsdp")),)
    source = SyntheticMotionSource(8, (40, 60))
    stats = compute_stats(source[i].motion for i in range(8))
    batch = make_batches(source, 8, (33,), (1,), seed=0)[0]
    meshes = [((1, 1, 1), jax.devices()[:1])] + [(m, jax.devices()) for m in json.loads(sys.argv[2])]
    out = {}
    for shape, devices in meshes:
        config.mesh = dict(zip(("data", "fsdp", "tensor"), shape))
        trainer = FourDMoTTrainer(config, devices)
        state = trainer.init_state(stats)
        state, metrics = trainer.train_step(state, trainer.device_batch(batch),
                                            jax.random.PRNGKey(3))
        out[str(tuple(shape))] = {"loss": float(metrics["loss"]),
                           "kernel": np.asarray(state.params["encoder"]["conv_out"]["kernel"]).ravel()[:512].tolist(),
                           "codebook": np.asarray(state.quantizer["codebook"]).ravel()[:512].tolist()}
    print("RESULT" + json.dumps(out))
""")


def test_one_step_is_the_same_on_every_mesh():
    from conftest import simulated_devices_env
    env = simulated_devices_env(8)
    run = subprocess.run([sys.executable, "-c", _SCRIPT, str(REPO_ROOT / "configs" / "4dmot.py"),
                          json.dumps(MESHES)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split("RESULT")[-1])
    single = out["(1, 1, 1)"]
    for mesh in MESHES:
        result = out[str(mesh)]
        np.testing.assert_allclose(result["loss"], single["loss"], rtol=1e-5, err_msg=str(mesh))
        np.testing.assert_allclose(result["kernel"], single["kernel"], rtol=1e-4, atol=1e-6,
                                   err_msg=str(mesh))
        np.testing.assert_allclose(result["codebook"], single["codebook"], rtol=1e-4, atol=1e-5,
                                   err_msg=str(mesh))
