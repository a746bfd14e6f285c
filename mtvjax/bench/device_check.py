"""Device check of the real MV-DiT train step on a GPU or TPU: step time, MFU and peak memory per
attention kernel. Not part of CI; run it whenever such a machine is at hand:

    python -m mtvjax.bench.device_check [--config configs/mvdit.py:7b] [--frames 49] \
        [--height 512] [--width 512] [--attention cudnn,chunked,xla] [--steps 5] [--layers 0]
        [--torch]

Each kernel runs in its own process (so one that runs out of memory does not end the check, and
each peak is its own): it builds the trainer's state on the local devices with the config's mesh
and sharding rules, compiles `mvdit_step.make_train_step` (the trainer's step, `train.dtype` of
the config: bf16 compute for 7b/17b, float32 master weights and AdamW state), runs `--steps`
steps on a random batch and prints one row:

  step s        median wall-clock seconds of a step (after the compiling one);
  TFLOP         per device: XLA's cost analysis of the same step with plain XLA attention,
                lowered (cuDNN and Pallas kernels are opaque to it), recomputation under remat
                included, divided by the devices;
  MFU           TFLOP / step s / the device's peak dense bf16 TFLOP/s (`PEAK_TFLOPS` by device
                kind, or `--peak-tflops`);
  peak GiB      the device's `peak_bytes_in_use` (largest over local devices).

`--torch` adds a row for the repository's PyTorch 7B reference at the same size and depth (bf16
autocast and `scaled_dot_product_attention` on CUDA; float32 on CPU), AdamW, its MFU from the
first JAX row's FLOP count and `torch.cuda.max_memory_allocated`.

`--layers 0` keeps the config's depth when its parameters and AdamW state (16 bytes per trained
parameter, 4 per frozen one) fit in 45 % of one device's memory per device of the mesh, else it
takes the largest depth that does and says so (the 7B's 7.2 B parameters need ~115 GB of
float32 training state: more than one 80 GB device holds without FSDP).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

from mtvjax.bench.common import REPO

GiB = 1024 ** 3
# Dense bf16 peak TFLOP/s by `device_kind` prefix (vendor data sheets, no sparsity).
PEAK_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0,
               "NVIDIA L4": 121.0, "NVIDIA A10G": 125.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6 lite": 918.0}


def peak_tflops(device_kind: str) -> float | None:
    for prefix, value in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if device_kind.startswith(prefix):
            return value
    return None


def state_bytes(config, num_layers: int) -> int:
    """Bytes of parameters + AdamW state at `num_layers` (abstract: nothing is allocated)."""
    import functools

    import jax
    import numpy as np

    from mtvjax.train import mvdit_step as steps
    config = config.copy_and_resolve_references()
    config.model.num_layers = num_layers
    model, tx = steps.build_model(config), steps.make_optimizer(config)
    state = jax.eval_shape(functools.partial(steps.init_state, config, model, tx),
                           jax.random.PRNGKey(0))
    size = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize  # noqa: E731
                            for x in jax.tree.leaves(tree))
    return size(state.params) + size(state.opt_state)


def fitting_layers(config, budget: int) -> int:
    """The config's depth, or the largest depth whose state fits `budget` bytes."""
    full = int(config.model.num_layers)
    one, two = state_bytes(config, 1), state_bytes(config, 2)
    per_layer, rest = two - one, 2 * one - two
    return max(1, min(full, int((budget - rest) // max(per_layer, 1))))


def random_batch(config, batch: int, frames: int, height: int, width: int, mesh, rules):
    import jax
    import jax.numpy as jnp

    from mtvjax.models.mvdit import registry
    from mtvjax.parallel.sharding import named_sharding
    from mtvjax.train import mvdit_step as steps
    fam = registry.of(config)
    abstract = steps.abstract_batch(config, batch, frames, height, width,
                                    text_rows=512 if fam.HAS_TEXT else 0,
                                    image_tokens=257 if fam.HAS_IMAGE else 0, logvar=True)
    out = {}
    for n, (name, leaf) in enumerate(sorted(abstract.items())):
        sharding = named_sharding(mesh, (None, "batch") + (None,) * (leaf.ndim - 2), rules)
        if name == "latents_logvar":
            value = jnp.full(leaf.shape, -6.0, leaf.dtype)
        elif name == "text_lens":
            value = jnp.full(leaf.shape, 512, leaf.dtype)
        elif jnp.issubdtype(leaf.dtype, jnp.integer):
            value = jnp.zeros(leaf.shape, leaf.dtype)
        else:
            value = jax.random.normal(jax.random.PRNGKey(n), leaf.shape, leaf.dtype)
        out[name] = jax.device_put(value, sharding)
    return out


def step_flops(config, state, batch, num_devices: int) -> float:
    """FLOPs per device of one train step, counted on the same step with plain XLA attention
    (lowered, not compiled): XLA's cost analysis does not see inside cuDNN or Pallas kernels.
    The lowered program is the global one, before partitioning, hence the division."""
    import jax

    from mtvjax.models.mvdit import registry
    from mtvjax.train import mvdit_step as steps
    config = config.copy_and_resolve_references()
    config.model[registry.of(config).ATTENTION_FIELD] = "xla"
    model, tx = steps.build_model(config), steps.make_optimizer(config)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
    cost = jax.jit(steps.make_train_step(config, model, tx)).lower(*abstract, None).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan"))) / num_devices


def run_one(args) -> dict:
    """One kernel in this process: the figures of its row."""
    import functools

    import jax
    import numpy as np

    from mtvjax.config import load_config
    from mtvjax.data.latent_records import latent_frames_for
    from mtvjax.models.mvdit import registry
    from mtvjax.parallel.mesh import make_mesh
    from mtvjax.parallel.sharding import activation_sharding, init_sharded, replicated
    from mtvjax.train import mvdit_step as steps
    from mtvjax.train.mvdit_trainer import fit_config

    config = load_config(args.config)
    config.model[registry.of(config).ATTENTION_FIELD] = args.one
    f, h, w = latent_frames_for(args.frames), args.height // 8, args.width // 8
    config, _ = fit_config(config, {"latents": np.zeros((f, 1, 1, 1))})
    device = jax.local_devices()[0]
    mesh = make_mesh(config.mesh)
    limit = (device.memory_stats() or {}).get("bytes_limit", 0)
    layers = args.layers or (fitting_layers(config, int(0.45 * limit * mesh.size)) if limit
                             else int(config.model.num_layers))
    config.model.num_layers = layers
    rules = tuple(tuple(r) for r in config.sharding_rules)
    model, tx = steps.build_model(config), steps.make_optimizer(config)
    init = functools.partial(steps.init_state, config, model, tx)
    state, shardings = init_sharded(init, mesh, rules, jax.random.PRNGKey(0))
    batch = random_batch(config, args.batch * mesh.size, f, h, w, mesh, rules)
    step = jax.jit(steps.make_train_step(config, model, tx),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
    start = time.perf_counter()
    with activation_sharding(mesh, rules):     # as the trainer traces its step
        compiled = step.lower(state, batch, None).compile()
    compile_s = time.perf_counter() - start
    flops = step_flops(config, state, batch, mesh.size)
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, None)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times[1:]))
    peak = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices())
    tflops = args.peak_tflops or peak_tflops(device.device_kind)
    return {"kernel": args.one, "device": device.device_kind, "devices": mesh.size,
            "layers": layers, "full_layers": int(load_config(args.config).model.num_layers),
            "step_s": step_s, "tflop": flops / 1e12, "compile_s": compile_s,
            "mfu": (flops / step_s / (tflops * 1e12)) if tflops else None,
            "peak_gib": peak / GiB, "loss": float(metrics["loss"])}


def run_torch(args) -> dict:
    """The repository's PyTorch 7B reference (`tests/torch_reference_mvdit7b.py`) at the same
    size and depth: bf16 autocast and SDPA on CUDA (float32 on CPU), AdamW, MSE to zeros;
    MFU from the JAX row's FLOP count (`--torch-tflop`)."""
    import numpy as np
    import torch

    from mtvjax.bench.common import torch_reference
    from mtvjax.config import load_config
    from mtvjax.data.latent_records import latent_frames_for
    ref = torch_reference("torch_reference_mvdit7b")
    config = load_config(args.config)
    if ref is None or config.model.get("family", "cogvideox") != "cogvideox":
        raise RuntimeError("the PyTorch row needs torch, tests/ and a 7B-family config")
    ref.USE_SDPA = True
    m, f = config.model, latent_frames_for(args.frames)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    width = m.num_heads * m.head_dim
    model = ref.ReferenceMVDiT7B(num_layers=args.layers, heads=m.num_heads, head_dim=m.head_dim,
                                 time_embed_dim=m.time_embed_dim, text_embed_dim=m.text_embed_dim,
                                 patch=m.patch_size, uncond_shape=(f * 24, width)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.99),
                                  weight_decay=1e-2)
    b, h, w = args.batch, args.height // 8, args.width // 8
    hs = torch.randn(b, f, 32, h, w, device=device)
    motion = torch.randn(b, f * 24, width, device=device)
    t = torch.full((b,), 500, device=device, dtype=torch.long)
    p = m.patch_size
    vis = tuple(x.to(device) for x in ref.vision_rope(f, h // p, w // p, m.head_dim))
    mot = tuple(x.to(device) for x in ref.motion_rope(f, np.zeros((24, 3), np.float32),
                                                        m.head_dim))

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = (model(hs, t, motion, vis, mot) ** 2).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times[1:]))
    kind = torch.cuda.get_device_name() if cuda else "cpu"
    tflops = args.peak_tflops or peak_tflops(kind)
    return {"kernel": "torch sdpa" + (" bf16" if cuda else " f32"), "device": kind,
            "devices": 1, "layers": args.layers,
            "full_layers": int(config.model.num_layers), "step_s": step_s,
            "tflop": args.torch_tflop, "compile_s": 0.0,
            "mfu": (args.torch_tflop * 1e12 / step_s / (tflops * 1e12))
            if tflops and args.torch_tflop else None,
            "peak_gib": (torch.cuda.max_memory_allocated() if cuda else 0) / GiB}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=f"{REPO / 'configs' / 'mvdit.py'}:7b")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1, help="clips per device")
    parser.add_argument("--attention", default="cudnn,chunked,xla")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=0, help="0: the config's, if it fits")
    parser.add_argument("--peak-tflops", type=float, default=0.0)
    parser.add_argument("--torch", action="store_true",
                        help="add the PyTorch reference (7B: bf16 autocast + SDPA on CUDA) at "
                             "the depth of the first JAX row, one device")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--torch-tflop", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run = run_torch if args.one == "torch" else run_one
        print("RESULT " + json.dumps(run(args)), flush=True)
        return
    print(f"{args.config}: {args.frames} frames {args.height}x{args.width}, batch "
          f"{args.batch}/device, {args.steps} timed steps", flush=True)
    rows = []
    given = list(argv if argv is not None else sys.argv[1:])
    for kernel in args.attention.split(",") + (["torch"] if args.torch else []):
        extra = []
        done = [r for r in rows if "error" not in r]
        if kernel == "torch":
            if not done:
                rows.append({"kernel": "torch", "error": "no JAX row to match its depth"})
                continue
            extra = ["--layers", str(done[0]["layers"]), "--torch-tflop",
                     str(done[0]["tflop"])]
        cmd = [sys.executable, "-m", "mtvjax.bench.device_check", "--one", kernel, *given,
               *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            errors = [l for l in proc.stderr.splitlines()
                      if re.match(r"^[\w.]+(Error|Exception|Exhausted)\b", l)]
            reason = (errors or proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
            rows.append({"kernel": kernel, "error": reason})
            print(f"{kernel}: failed ({reason})", flush=True)
            continue
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"{kernel}: done", flush=True)
    print()
    print("| attention | device | layers | step s | TFLOP/step | MFU | peak GiB | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['kernel']} | failed: {r['error']} |||||||")
            continue
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        print(f"| {r['kernel']} | {r['devices']} × {r['device']} | {r['layers']}/{r['full_layers']}"
              f" | {r['step_s']:.3f} | {r['tflop']:.3g} | {mfu} | {r['peak_gib']:.1f} | "
              f"{r['compile_s']:.0f} |")


if __name__ == "__main__":
    main()
