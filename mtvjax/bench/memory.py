"""Memory plan: per-device bytes of the real MV-DiT train and sampling steps from the shipped
configs, compiled ahead of time on simulated devices (nothing is allocated).

    python -m mtvjax.bench.memory [--only NAME,...] [--list]

Sets `--xla_force_host_platform_device_count` to the largest scenario's device count before JAX
starts. Each scenario (`PLAN`) takes a shipped config exactly as it is (remat, attention, mesh,
dtypes; only the mesh's -1 axis resolves to the scenario's devices) and compiles:

* training: `MVDiTTrainer.compiled` of `configs/mvdit.py:VARIANT` — the trainer's own jitted
  step (bf16 compute, float32 master weights and AdamW state, donated state, traced under the
  config's activation sharding, so a `context` axis splits the video tokens) for an abstract
  global batch of one clip per (data × fsdp) group: `frames` video frames at `height × width`
  (latents /8 in space, 1 + (frames − 1)/4 in time), precomputed motion tokens, the VAE posterior
  log-variance, and for the 17B 512 umT5 rows and 257 CLIP tokens;
* sampling: the animator's compiled sampling loop (`SamplingRuns.compile`) of
  `configs/animate.py:VARIANT` — the family's released sampler and guidance (CFG batch of 2),
  the whole loop in one jit — with the MV-DiT's parameters in the config's dtype (bf16) in the
  shardings `mtvjax convert` checkpoints restore into, for one 49-frame window.

Per device it prints parameters (+ optimiser state for training, from the shardings) and XLA's
`compiled.memory_analysis()`: peak ≈ arguments + outputs − aliased + temporaries, against the
scenario's budget. Sampling compiles without XLA's loop-invariant code motion
(`CPU_SAMPLING_OPTIONS`: on XLA:CPU it would hoist a float32 copy of all bf16 weights out of the
layer scan, an artifact of CPU bf16 matmuls; with it the 17B on one device reads 106 GiB).
Training keeps every pass (its figures include such copies of the float32 master weights'
bf16 casts, so they are upper bounds). XLA:CPU has no fused attention: the configs' `auto` attention then takes the
models' `chunked` kernel for long sequences (query chunks, rematerialised), which is what these
figures measure; on GPU `auto` picks cuDNN flash attention, whose temporaries are smaller still.
CPU buffer assignment is not the GPU's or TPU's: treat the figures as a plan, and check with
`python -m mtvjax.bench.device_check` on the device.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from mtvjax.bench.common import REPO

GiB = 1024 ** 3
CONFIGS = REPO / "configs"
# XLA:CPU computes bf16 matmuls in float32; loop-invariant code motion then hoists a float32
# copy of every layer's bf16 weights out of the layer scan (2 × the parameters' bytes), which
# devices with native bf16 matmuls never make. Sampling (bf16 weights) is compiled without it.
CPU_SAMPLING_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    kind: str            # train | sample
    config: str          # configs/<file>:<variant>
    devices: int
    frames: int
    height: int
    width: int
    budget_gib: float    # what it must fit per device
    model: str = ""      # sample: the configs/mvdit.py preset of the checkpoint (default: variant)
    overrides: tuple = ()   # (dotted key, value): test-size changes only (sample: "model.*" keys
                            # change the checkpoint's model config)


PLAN = (
    Scenario("train-7b-512", "train", "mvdit.py:7b", 8, 49, 512, 512, 70),
    Scenario("train-17b-512", "train", "mvdit.py:17b", 8, 49, 512, 512, 70),
    Scenario("train-17b-720p-8", "train", "mvdit.py:17b_720p", 8, 81, 720, 1280, 70),
    Scenario("train-17b-720p-16", "train", "mvdit.py:17b_720p", 16, 81, 720, 1280, 70),
    Scenario("sample-7b-1", "sample", "animate.py:7b", 1, 49, 512, 512, 22),
    Scenario("sample-7b-8", "sample", "animate.py:7b", 8, 49, 512, 512, 20),
    Scenario("sample-17b-1", "sample", "animate.py:17b", 1, 49, 512, 512, 70),
    Scenario("sample-17b-8", "sample", "animate.py:17b", 8, 49, 512, 512, 20),
)
# The same two paths at CPU-test size (tests/test_memory_plan.py).
TINY_PLAN = (
    Scenario("train-tiny-context", "train", "mvdit.py:tiny", 4, 9, 64, 64, 1,
             overrides=(("mesh.data", 1), ("mesh.fsdp", -1), ("mesh.context", 2),
                        ("model.attention_chunk", 16))),
    Scenario("sample-tiny-2", "sample", "animate.py:7b", 2, 9, 64, 64, 1, model="tiny",
             overrides=(("model.uncond_motion_shape", (72, 128)), ("sampling.steps", 2))),
)


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs / arrays (largest shard)."""
    import jax
    import numpy as np
    total = 0
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += int(np.prod(shape)) * leaf.dtype.itemsize
    return total


def _size(num_bytes: int) -> str:
    return (f"{num_bytes / GiB:.2f} GiB" if num_bytes >= GiB / 10
            else f"{num_bytes / 2 ** 20:.1f} MiB")


def _figures(compiled, state_bytes: int, extra: dict) -> dict:
    mem = compiled.memory_analysis()
    args, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    return {"state": state_bytes, "arguments": args, "outputs": out, "aliased": alias,
            "temporaries": temp, "peak": args + out - alias + temp, **extra}


def _latents(frames: int, height: int, width: int) -> tuple[int, int, int]:
    from mtvjax.data.latent_records import latent_frames_for
    return latent_frames_for(frames), height // 8, width // 8


def train_figures(s: Scenario, config) -> dict:
    """Compiles the trainer's step of `config` on `s.devices` devices (module docstring)."""
    import jax
    import numpy as np

    from mtvjax.models.mvdit import registry
    from mtvjax.train import mvdit_step as steps
    from mtvjax.train.mvdit_trainer import MVDiTTrainer, fit_config

    f, h, w = _latents(s.frames, s.height, s.width)
    config, _ = fit_config(config, {"latents": np.zeros((f, 1, 1, 1))})
    trainer = MVDiTTrainer(config, jax.devices()[:s.devices])
    state = trainer.abstract_state()
    sizes = dict(trainer.mesh.shape)
    fam = registry.of(config)
    batch = steps.abstract_batch(config, sizes["data"] * sizes["fsdp"], f, h, w,
                                 text_rows=512 if fam.HAS_TEXT else 0,
                                 image_tokens=257 if fam.HAS_IMAGE else 0, logvar=True)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding(v.ndim))
             for k, v in batch.items()}
    compiled = trainer.compiled(state, batch)
    return _figures(compiled, shard_bytes(state.params) + shard_bytes(state.opt_state),
                    {"mesh": sizes, "tflop": trainer.flops_per_step / 1e12})


def sample_figures(s: Scenario, config) -> dict:
    """Compiles the animator's sampling loop of `config` on `s.devices` devices."""
    import importlib

    import jax
    import jax.numpy as jnp

    from mtvjax.config import load_config
    from mtvjax.models.mvdit import registry
    from mtvjax.parallel.mesh import make_mesh
    from mtvjax.parallel.sharding import param_shardings, replicated
    from mtvjax.parallel.context_attention import check_heads
    from mtvjax.sample.animator_common import (SamplingRuns, attention_kernel, compute_dtype,
                                               recipe_sampling)

    model_config = load_config(f"{CONFIGS / 'mvdit.py'}:{s.model or config.variant}")
    model_config.update_from_flattened_dict({k: v for k, v in s.overrides
                                             if k.startswith("model.")})
    fam = registry.of(model_config)
    kernel = attention_kernel(config)                   # the animate config's, as animators do
    model_config.model.update({fam.ATTENTION_FIELD: kernel.name,
                               "attention_chunk": kernel.chunk,
                               "attention_kv_chunk": kernel.kv_chunk})
    module, name = fam.ANIMATOR.split(":")
    animator = getattr(importlib.import_module(module), name)
    dtype = compute_dtype(config.dtype)
    model = fam.build_model(model_config, config.dtype)
    mesh = make_mesh(dict(config.mesh), jax.devices()[:s.devices])
    rules = tuple(tuple(r) for r in config.sharding_rules)
    check_heads(model_config.model.num_heads, dict(mesh.shape), rules)
    shapes = fam.abstract_params(model_config)
    shardings = param_shardings(fam.logical_axes(model_config), shapes, mesh, rules)
    params = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(
        x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, sharding=sh),
        shapes, shardings)
    whole = replicated(mesh)
    f, h, w = _latents(s.frames, s.height, s.width)
    latent_shape, cond = animator.abstract_window(model, (1, f, h, w))
    cond = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=whole) for x in cond)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=whole)
    sampler, guidance = recipe_sampling(config.family, config.sampling)
    runs = SamplingRuns(animator.denoise_fn(model, config.sampling), sampler, guidance, dtype,
                        config.long.blend, progress=False, mesh=mesh, rules=rules)
    compiled = runs.compile(latent_shape, 0, (key, params) + cond,
                            compiler_options=CPU_SAMPLING_OPTIONS)
    return _figures(compiled, shard_bytes(params), {"mesh": dict(mesh.shape)})


def run(s: Scenario) -> dict:
    from mtvjax.config import load_config
    config = load_config(str(CONFIGS / s.config))
    config.update_from_flattened_dict({k: v for k, v in s.overrides
                                       if s.kind == "train" or not k.startswith("model.")})
    start = time.perf_counter()
    figures = (train_figures if s.kind == "train" else sample_figures)(s, config)
    return {**figures, "seconds": time.perf_counter() - start}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--tiny", action="store_true", help="the CPU-test-size plan")
    parser.add_argument("--list", action="store_true", help="print the scenarios and exit")
    args = parser.parse_args(argv)
    plan = TINY_PLAN if args.tiny else PLAN
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {s.name for s in plan})
        if unknown:
            raise SystemExit(f"--only: unknown scenario(s) {unknown}; see --list")
        plan = tuple(s for s in plan if s.name in names)
    if args.list:
        for s in plan:
            print(f"{s.name}: {s.kind} {s.config} on {s.devices} devices, {s.frames} frames "
                  f"{s.height}x{s.width}, budget {s.budget_gib} GiB")
        return
    if "jax" in sys.modules:
        raise SystemExit("mtvjax.bench.memory must set XLA_FLAGS before JAX is imported")
    devices = max(s.devices for s in plan)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    rows = []
    for s in plan:
        r = run(s)
        rows.append((s, r))
        print(f"{s.name}: {s.config} mesh {r['mesh']}, {s.frames}x{s.height}x{s.width}, "
              f"peak {r['peak'] / GiB:.2f} GiB/device (budget {s.budget_gib}), "
              f"compiled in {r['seconds']:.0f} s", flush=True)
    print()
    print("| scenario | config | devices | mesh (data, fsdp, context, tensor) | clip | "
          "params + opt state | temporaries | peak / device | budget | fits |")
    print("|" + "---|" * 10)
    for s, r in rows:
        mesh = ", ".join(str(r["mesh"].get(a, 1)) for a in ("data", "fsdp", "context", "tensor"))
        fits = "yes" if r["peak"] <= s.budget_gib * GiB else "**no**"
        print(f"| {s.name} | `{s.config}` | {s.devices} | {mesh} | {s.frames}×{s.height}×"
              f"{s.width} | {_size(r['state'])} | {_size(r['temporaries'])} | "
              f"{_size(r['peak'])} | {s.budget_gib:g} GiB | {fits} |")


if __name__ == "__main__":
    main()
