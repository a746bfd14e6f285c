"""Context (sequence) parallelism gives the same train step and the same samples as one device.

One subprocess with 8 simulated CPU devices (`--xla_force_host_platform_device_count=8`, set
before JAX starts) runs, for the tiny 7B with 8 heads, one train step (condition dropout and
clipping on) on one device and on the (data, fsdp, context, tensor) meshes (1,2,4,1), (2,1,2,2),
(1,1,8,1) (attention kernel "chunked"); the tiny 17B (4 heads, motion-only training with text
dropout, kernel "auto") on (2,1,2,2); and two
steps of each family's released sampler (with CFG) on one device and on a context mesh; and the
Pallas splash kernel (interpret mode) per device under meshes with and without a context axis,
forward and gradients against one-device "reference". It prints
the largest deviations as JSON; the test checks them with the tolerances of
`test_mesh_equivalence_mvdit`. 3 latent frames of 4×4 patches = 48 video tokens, which split over
2, 4 and 8 devices.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

TRAIN_MESHES = {"tiny": [(1, 2, 4, 1), (2, 1, 2, 2), (1, 1, 8, 1)], "tiny17b": [(2, 1, 2, 2)]}
SAMPLE_MESH = {"tiny": (1, 1, 8, 1), "tiny17b": (1, 2, 2, 2)}
LR = 1e-3
LOSS_RTOL, GRAD_NORM_RTOL, PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-5, 1e-4, 1e-2 * LR
SAMPLE_RTOL = 1e-4       # of the latents' largest magnitude


def _config(variant: str):
    from test_mesh_equivalence_mvdit import _config as mesh_test_config
    config = mesh_test_config(variant)       # float32, batch 8, lr 1e-3 at step 0, eps 1e-6
    if variant == "tiny":
        config.model.num_heads, config.model.head_dim = 8, 16      # D = 128 as the tiny
        # the per-device kernel is the configured one: chunked queries and keys (17B: auto)
        config.model.attention_implementation = "chunked"
        config.model.attention_chunk = config.model.attention_kv_chunk = 16
        config.model.motion_out_zero_init = False    # gradients reach the motion q, k, v
    else:
        config.model.num_heads, config.model.dim = 4, 512          # head_dim 128 (RoPE bands)
    return config


def _mesh(config, shape):
    c = config.copy_and_resolve_references()
    c.mesh.data, c.mesh.fsdp, c.mesh.context, c.mesh.tensor = shape
    return c


def _train(variant: str) -> dict:
    import jax
    import numpy as np

    from mtvjax.data.latent_batches import make_latent_batches
    from mtvjax.train import mvdit_trainer as T

    config = _config(variant)
    source = T.make_source(config)
    config, _ = T.fit_config(config, source[0])
    local = make_latent_batches(source, 8, 0)[0]

    def run(shape):
        trainer = T.MVDiTTrainer(_mesh(config, shape), jax.devices()[:int(np.prod(shape))])
        trainer.abstract_state()
        state = jax.device_put(init, trainer.state_shardings)
        state, metrics = trainer.step(state, trainer.device_batch(local))
        return (float(metrics["loss"]), float(metrics["grad_norm"]),
                jax.tree.map(np.asarray, jax.device_get(state.params)))

    init = jax.device_get(T.MVDiTTrainer(config, jax.devices()[:1]).init_state())
    ref_loss, ref_norm, ref_params = run((1, 1, 1, 1))
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(ref_params), jax.tree.leaves(init.params)))
    rows = {}
    for shape in TRAIN_MESHES[variant]:
        loss, norm, params = run(shape)
        ratio = max(float((np.abs(a - b) / (PARAM_ATOL + PARAM_RTOL * np.abs(b))).max())
                    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
        rows["x".join(map(str, shape))] = {
            "loss_rel_diff": abs(loss - ref_loss) / abs(ref_loss),
            "grad_norm_rel_diff": abs(norm - ref_norm) / ref_norm,
            "param_tolerance_ratio": ratio}
    return {"largest_update": moved, "meshes": rows, "config": config,
            "params": init.params}


def _sample(variant: str, config, params) -> dict:
    """Two sampler steps with CFG on one device and on `SAMPLE_MESH[variant]`."""
    import jax
    import numpy as np

    from mtvjax.models.mvdit import registry
    from mtvjax.parallel.mesh import make_mesh
    from mtvjax.parallel.sharding import activation_sharding, replicated
    from mtvjax.sample.mvdit_generate import generate_17b, generate_7b

    model = registry.of(config).build_model(config, "float32")
    rng = np.random.default_rng(0)
    # zero-initialised leaves (output projections, biases) get weights, so every branch counts
    params = jax.tree.map(lambda x: x if np.any(x) else
                          rng.normal(0, 0.05, x.shape).astype(x.dtype), params)
    b, f, h, w = 2, 3, 8, 8
    motion = rng.normal(size=(b, f * 24, registry.of(config).motion_width(config.model)))
    if variant == "tiny":
        inputs = (rng.normal(size=(b, f, h, w, 16)), motion.astype(np.float32))

        def generate(*args):
            return generate_7b(model, params, *args, jax.random.PRNGKey(3), num_steps=2,
                               motion_cfg=3.0)
    else:
        m = config.model
        inputs = (rng.normal(size=(b, f, h, w, 20)), rng.normal(size=(b, 5, m.text_dim)),
                  rng.normal(size=(b, 5, m.text_dim)), rng.normal(size=(b, 4, m.image_dim)),
                  motion)

        def generate(*args):
            return generate_17b(model, params, *args, jax.random.PRNGKey(3), num_steps=2,
                                text_cfg=5.0)
    inputs = [np.asarray(x, np.float32) for x in inputs]
    single = np.asarray(generate(*inputs))
    shape = SAMPLE_MESH[variant]
    c = _mesh(config, shape)
    mesh = make_mesh(dict(c.mesh), jax.devices()[:int(np.prod(shape))])
    params = jax.device_put(params, replicated(mesh))       # the closure's parameters
    with activation_sharding(mesh, c.sharding_rules):
        sharded = np.asarray(generate(*jax.device_put(inputs, replicated(mesh))))
    return {"mesh": "x".join(map(str, shape)),
            "rel_diff": float(np.abs(sharded - single).max() / np.abs(single).max())}


def _splash() -> dict:
    """The Pallas splash kernel (interpret mode) under a mesh: per device by shard_map, with and
    without context parallelism; forward and q/k/v gradients against one-device `reference`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mtvjax.models.layers import attention as A
    from mtvjax.parallel.mesh import make_mesh
    from mtvjax.parallel.sharding import activation_sharding

    rules = _config("tiny").sharding_rules
    kernel = A.AttentionKernel("splash", chunk=128, kv_chunk=128)
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    q = jax.random.normal(keys[0], (4, 256, 4, 32))
    memory = jax.random.normal(keys[1], (4, 50, 4, 32))      # a short replicated sequence

    def grads(implementation, mode):
        def loss(q, k, v):
            out = A.dot_product_attention(q, k, v, implementation=implementation,
                                          context_parallel=mode)
            return (out * jnp.cos(out)).sum(), out
        k, v = (q, jnp.flip(q, 1)) if mode == "self" else (memory, memory * 0.5)
        fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
        return jax.jit(fn)(q, k, v), "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))

    rows = {}
    for shape in ((2, 2, 1, 2), (1, 2, 2, 2)):
        mesh = make_mesh(dict(zip(("data", "fsdp", "context", "tensor"), shape)))
        for mode in ("self", "cross"):
            ((_, want), want_grads), _ = grads("reference", mode)
            with activation_sharding(mesh, rules):
                ((_, out), out_grads), per_device = grads(kernel, mode)
            diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(b).max())
                     for a, b in zip((out,) + tuple(out_grads), (want,) + tuple(want_grads))]
            rows["x".join(map(str, shape)) + "/" + mode] = {"rel_diff": max(diffs),
                                                            "shard_map": per_device}
    return rows


def worker() -> dict:
    import jax
    assert len(jax.devices()) == 8, jax.devices()
    results = {}
    for variant in TRAIN_MESHES:
        train = _train(variant)
        sample = _sample(variant, train.pop("config"), train.pop("params"))
        results[variant] = {"train": train, "sample": sample}
    results["splash"] = _splash()
    return results


def test_heads_must_divide_by_context_times_tensor():
    from conftest import load_config
    from mtvjax.errors import ConfigError
    from mtvjax.parallel.context_attention import check_heads

    config = load_config("mvdit.py", "tiny")           # 2 heads
    assert dict(config.mesh)["context"] == 1
    rules = config.sharding_rules
    check_heads(2, dict(data=8, fsdp=1, context=1, tensor=1), rules)
    check_heads(8, dict(data=1, fsdp=1, context=4, tensor=2), rules)
    for sizes in (dict(data=1, fsdp=1, context=4, tensor=1),
                  dict(data=1, fsdp=1, context=2, tensor=2)):
        with pytest.raises(ConfigError, match="config.model.num_heads=2"):
            check_heads(2, sizes, rules)


@pytest.fixture(scope="module")
def results():
    from conftest import run_script_on_eight_devices
    return run_script_on_eight_devices(__file__)


def test_train_step_agrees_on_context_meshes(results):
    for variant in TRAIN_MESHES:
        train = results[variant]["train"]
        assert train["largest_update"] > 1e-4, variant        # the step did move the params
        assert set(train["meshes"]) == {"x".join(map(str, s)) for s in TRAIN_MESHES[variant]}
        for mesh, row in train["meshes"].items():
            assert row["loss_rel_diff"] < LOSS_RTOL, (variant, mesh, row)
            assert row["grad_norm_rel_diff"] < GRAD_NORM_RTOL, (variant, mesh, row)
            assert row["param_tolerance_ratio"] <= 1.0, (variant, mesh, row)


def test_sampling_agrees_on_context_meshes(results):
    for variant in TRAIN_MESHES:
        assert results[variant]["sample"]["rel_diff"] < SAMPLE_RTOL, results[variant]["sample"]


def test_splash_runs_per_device_on_a_mesh(results):
    rows = results["splash"]
    assert set(rows) == {"2x2x1x2/self", "2x2x1x2/cross", "1x2x2x2/self", "1x2x2x2/cross"}
    for name, row in rows.items():
        assert row["shard_map"] and row["rel_diff"] < 1e-5, (name, row)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(json.dumps(worker()))
