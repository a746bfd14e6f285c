"""Per-device memory of the real MV-DiT train step, compiled ahead of time on simulated devices.

    python -m mtvjax.bench.memory --config configs/mvdit.py:7b --mesh fsdp=8 \
        [--remat none,full,dots_saveable] [--frames 49] [--height 512] [--width 512] \
        [--batch-per-device 1] [--attention-chunk 512]

Sets `--xla_force_host_platform_device_count` to the mesh size before JAX starts, builds the
train state abstractly (`jax.eval_shape` + the config's sharding rules: nothing is allocated),
lowers and compiles `train_step` (bf16 compute, float32 master weights and AdamW state,
`train.dtype` of the config) for an abstract global batch of `batch-per-device × (data·fsdp)`
clips of `frames` video frames at `height × width` (latents /8 in space, 1 + (frames−1)/4 in
time; precomputed motion tokens; for wan also 512 text rows and 257 CLIP tokens), and prints per
device, for each remat policy:

* parameters and optimiser state (bytes of each leaf's shard, from the shardings),
* XLA's `compiled.memory_analysis()`: arguments, outputs, aliased (donated) bytes, temporaries,
* peak ≈ arguments + outputs − aliased + temporaries, and the compile time.

XLA:CPU has no flash attention, and the plain XLA attention would materialise [heads, S, S]
logits (S = 13,312 tokens at 49×512×512: 34 GB per layer for 48 heads). The benchmark therefore
sets the model's attention to "chunked" (`mtvjax.models.layers.chunked_attention`, chunk
`--attention-chunk`, stored as `model.attention_chunk`): each query chunk's attention is
rematerialised in the backward pass, so attention temporaries are one chunk's [heads, chunk, S]
logits (the role cuDNN flash attention plays on GPU). The batch sharding survives the chunk loop
without constraints (Shardy, jax 0.10).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from mtvjax.bench.common import REPO

GiB = 1024 ** 3


def parse_mesh(spec: str) -> dict[str, int]:
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in filter(None, spec.split(",")):
        name, _, value = part.partition("=")
        if name not in sizes:
            raise SystemExit(f"unknown mesh axis {name!r}; use data, fsdp, tensor")
        sizes[name] = int(value)
    return sizes


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    import jax
    import numpy as np
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape)) * leaf.dtype.itemsize
    return total


def analyse(config, mesh_sizes: dict, frames: int, height: int, width: int,
            batch_per_device: int) -> dict:
    """Lowers and compiles the train step of `config` on the simulated mesh; returns figures."""
    import functools

    import jax
    import numpy as np

    from mtvjax.data.latent_records import latent_frames_for
    from mtvjax.models.mvdit import registry
    from mtvjax.parallel.mesh import make_mesh
    from mtvjax.parallel.sharding import abstract_sharded, named_sharding, replicated
    from mtvjax.train import mvdit_step as steps
    from mtvjax.train.mvdit_trainer import fit_config

    f = latent_frames_for(frames)
    h, w = height // 8, width // 8
    config, _ = fit_config(config, {"latents": np.zeros((f, 1, 1, 1))})
    mesh = make_mesh(mesh_sizes)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    model = steps.build_model(config)
    tx = steps.make_optimizer(config)
    init = functools.partial(steps.init_state, config, model, tx)
    state = abstract_sharded(init, mesh, rules, jax.random.PRNGKey(0))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    global_batch = batch_per_device * mesh_sizes["data"] * mesh_sizes["fsdp"]
    fam = registry.of(config)
    batch = steps.abstract_batch(config, global_batch, f, h, w,
                                 text_rows=512 if fam.HAS_TEXT else 0,
                                 image_tokens=257 if fam.HAS_IMAGE else 0,
                                 logvar=True)    # real-video records hold the VAE posterior
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=named_sharding(
        mesh, (None, "batch") + (None,) * (len(v.shape) - 2), rules)) for k, v in batch.items()}
    step_fn = steps.make_train_step(config, model, tx)
    jitted = jax.jit(step_fn, out_shardings=(state_shardings, replicated(mesh)),
                     donate_argnums=0)
    start = time.perf_counter()
    lowered = jitted.lower(state, batch, None)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    params = shard_bytes(state.params)
    opt = shard_bytes(state.opt_state)
    trainable, _ = steps.split_params(jax.tree.map(lambda x: x, state.params),
                                      steps.trainable_predicate(config))
    args, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    return {"params": params, "opt_state": opt, "arguments": args, "outputs": out,
            "aliased": alias, "temporaries": temp, "peak": args + out - alias + temp,
            "lower_s": lower_s, "compile_s": compile_s,
            "flops": float((cost or {}).get("flops", float("nan"))),
            "num_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
            "num_trainable": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable)),
            "global_batch": global_batch, "latent_shape": (f, h, w)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=f"{REPO / 'configs' / 'mvdit.py'}:7b")
    parser.add_argument("--mesh", default="fsdp=8", help="e.g. fsdp=8 or data=2,fsdp=4,tensor=2")
    parser.add_argument("--remat", default="none,full,dots_saveable")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch-per-device", type=int, default=1)
    parser.add_argument("--attention-chunk", type=int, default=512)
    parser.add_argument("--dtype", default="", help="override train.dtype (default: config's)")
    args = parser.parse_args(argv)

    sizes = parse_mesh(args.mesh)
    devices = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
    if "jax" in sys.modules:
        raise SystemExit("mtvjax.bench.memory must set XLA_FLAGS before JAX is imported")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    from mtvjax.config import load_config
    from mtvjax.models.mvdit import registry
    spec = args.config if os.path.isfile(args.config.partition(":")[0]) else args.config
    rows = []
    print(f"{spec}  mesh {sizes}  {args.frames} frames {args.height}x{args.width}  "
          f"batch {args.batch_per_device}/device  attention chunk {args.attention_chunk}",
          flush=True)
    header = ("| remat | params | opt state | arguments | outputs | aliased | temporaries | "
              "peak / device | compile s |")
    for remat in args.remat.split(","):
        config = load_config(spec)
        config.remat = remat
        if args.dtype:
            config.train.dtype = args.dtype
        config.model[registry.of(config).ATTENTION_FIELD] = "chunked"
        config.model.attention_chunk = args.attention_chunk
        r = analyse(config, sizes, args.frames, args.height, args.width, args.batch_per_device)
        rows.append((remat, r))
        print(f"{remat}: {r['num_params']:,} params ({r['num_trainable']:,} trained), "
              f"global batch {r['global_batch']}, latents {r['latent_shape']}, "
              f"{r['flops'] / 1e12:.1f} TFLOP/device/step, lowered in {r['lower_s']:.0f} s, "
              f"compiled in {r['compile_s']:.0f} s, peak {r['peak'] / GiB:.1f} GiB", flush=True)
    print()
    print(header)
    print("|" + "---|" * 9)
    for remat, r in rows:
        cells = [r[k] / GiB for k in ("params", "opt_state", "arguments", "outputs", "aliased",
                                      "temporaries", "peak")]
        print(f"| {remat} | " + " | ".join(f"{c:.2f} GiB" for c in cells)
              + f" | {r['compile_s']:.0f} |")


if __name__ == "__main__":
    main()
