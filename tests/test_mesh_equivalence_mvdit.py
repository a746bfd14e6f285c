"""One MV-DiT train step gives the same loss and updated parameters on every mesh.

A single subprocess with 8 simulated CPU devices (`--xla_force_host_platform_device_count=8`, set
before JAX starts) runs one step of the tiny 7B, with condition dropout and clipping on, for the
same global batch on one device and on the (data, fsdp, tensor) meshes (8,1,1), (2,4,1), (1,4,2),
(2,2,2) (and the same for the tiny 17B, motion-only training with text dropout, with
MTVJAX_MESH_TEST_17B=1), and prints the largest deviations as JSON; the test checks them. Parameters are initialised once and placed on each mesh, so each mesh compiles one step.
"""
from __future__ import annotations

import json
import os
import sys

MESHES = [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]
# Each (variant, mesh) is one more compilation of the step: the tiny 17B runs only with
# MTVJAX_MESH_TEST_17B=1 (on every mesh).
VARIANTS = {"tiny": MESHES}
if os.environ.get("MTVJAX_MESH_TEST_17B"):
    VARIANTS["tiny17b"] = MESHES
LR = 1e-3
# Parameters: 1e-4 relative, plus 1 % of one step (lr) absolute. Adam divides each gradient by
# |g| + eps, so a gradient of ~eps magnitude whose last bits depend on the reduction order moves
# its update by up to lr·Δg/(4·eps); see `_config`.
LOSS_RTOL, GRAD_NORM_RTOL, PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-5, 1e-4, 1e-2 * LR


def _config(variant: str):
    from mtvjax.config import load_config
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(repo, "configs", "mvdit.py") + f":{variant}")
    config.train.dtype = "float32"
    config.data.batch_size = 8
    config.data.synthetic_windows = 8
    config.optim.warmup_steps = 0           # a real update at step 0
    config.optim.learning_rate = LR
    config.optim.grad_clip_norm = 1.0
    # Adam's first step is lr·g/(|g| + eps): a gradient of ~eps (1e-8 by default) whose rounding
    # differs by 10 % moves its update by ~3 % of lr, whatever the mesh. eps = 1e-6 keeps the
    # comparison well conditioned; a sharding error (a missing or doubled reduction) still shows
    # as an O(1) difference. (At eps 1e-8 the largest deviation is ~3e-5 = 3 % of one step.)
    config.optim.eps = 1e-6
    if variant == "tiny17b":
        config.model.text_len = 8            # fewer padded text rows: a smaller program
        config.model.num_layers = 4          # one scanned group, no unscanned tail
    return config


def worker() -> dict:
    """Runs in the subprocess: every variant on every mesh; returns the deviations."""
    import jax
    import numpy as np

    from mtvjax.data.latent_batches import make_latent_batches
    from mtvjax.train import mvdit_trainer as T

    assert len(jax.devices()) == 8, jax.devices()
    results = {}
    for variant, meshes in VARIANTS.items():
        config = _config(variant)
        source = T.make_source(config)
        config, _ = T.fit_config(config, source[0])
        local = make_latent_batches(source, 8, 0)[0]

        def run(shape):
            c = config.copy_and_resolve_references()
            c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape
            trainer = T.MVDiTTrainer(c, jax.devices()[:int(np.prod(shape))])
            abstract = trainer.abstract_state()
            state = jax.device_put(init, trainer.state_shardings)
            del abstract
            state, metrics = trainer.step(state, trainer.device_batch(local))
            return (float(metrics["loss"]), float(metrics["grad_norm"]),
                    jax.tree.map(np.asarray, jax.device_get(state.params)))

        single = T.MVDiTTrainer(config, jax.devices()[:1])
        init = jax.device_get(single.init_state())
        ref_loss, ref_norm, ref_params = run((1, 1, 1))
        moved = max(float(np.max(np.abs(a - b))) for a, b in
                    zip(jax.tree.leaves(ref_params), jax.tree.leaves(init.params)))
        rows = {}
        for shape in meshes:
            loss, norm, params = run(shape)
            worst_abs, worst_rel = 0.0, 0.0
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
                diff = np.abs(a - b)
                worst_abs = max(worst_abs, float(diff.max()))
                bound = PARAM_ATOL + PARAM_RTOL * np.abs(b)
                worst_rel = max(worst_rel, float((diff / bound).max()))
            rows["x".join(map(str, shape))] = {
                "loss": loss, "loss_rel_diff": abs(loss - ref_loss) / abs(ref_loss),
                "grad_norm_rel_diff": abs(norm - ref_norm) / ref_norm,
                "param_max_abs_diff": worst_abs, "param_tolerance_ratio": worst_rel}
        results[variant] = {"single_device_loss": ref_loss, "largest_update": moved,
                            "meshes": rows}
    return results


def test_one_step_agrees_on_every_mesh():
    from conftest import run_script_on_eight_devices
    results = run_script_on_eight_devices(__file__)
    for variant, result in results.items():
        assert result["largest_update"] > 1e-4, variant        # the step did move the params
        for mesh, row in result["meshes"].items():
            assert row["loss_rel_diff"] < LOSS_RTOL, (variant, mesh, row)
            assert row["grad_norm_rel_diff"] < GRAD_NORM_RTOL, (variant, mesh, row)
            assert row["param_tolerance_ratio"] <= 1.0, (variant, mesh, row)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(json.dumps(worker()))
