"""Benchmark of the 4DMoT tokenizer: training and inference throughput, FLOPs, fraction of peak.

    python -m mtvjax.bench.tokenizer [--variant paper] [--batch 4] [--frames 49] [--steps 5]

Prints samples/s of one jitted train step and clips/s of inference (encode + quantise + decode)
at the given batch, the train step's FLOPs from XLA's cost analysis, the achieved GFLOP/s
against an f32 matmul peak measured on this machine in the same run, and — when torch and the
repository's PyTorch reference (`tests/torch_reference_4dmot.py`) are available — the same
train step in PyTorch, with the ratio.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.config import load_config
from mtvjax.data.loader import make_batches
from mtvjax.data.stats import compute_stats
from mtvjax.data.synthetic import SyntheticMotionSource
from mtvjax.train.fourdmot_trainer import FourDMoTTrainer

REPO = Path(__file__).resolve().parents[2]


def _time(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Achieved f32 GFLOP/s of an n×n×n matmul: the practical peak of this machine."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    seconds = _time(lambda: matmul(a).block_until_ready(), repeats)
    return 2 * n ** 3 / seconds / 1e9


def jax_figures(config, batch: np.ndarray, steps: int) -> dict:
    trainer = FourDMoTTrainer(config, jax.devices()[:1])
    state = trainer.init_state(compute_stats([batch.reshape(-1, 24, 3)]))
    device_batch = trainer.device_batch({"motion": batch, "skipped": np.array(0)})
    rng = jax.random.PRNGKey(1)
    compiled = trainer.train_step.lower(state, device_batch, rng).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))

    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], device_batch, rng)
        jax.block_until_ready(metrics["loss"])

    step_seconds = _time(step, steps)
    infer = jax.jit(trainer.eval_step)
    infer_seconds = _time(lambda: jax.block_until_ready(infer(holder["state"], device_batch)), steps)
    n = batch.shape[0]
    return {"train_samples_per_s": n / step_seconds, "train_step_s": step_seconds,
            "infer_clips_per_s": n / infer_seconds, "train_step_gflop": flops / 1e9,
            "train_gflops_per_s": flops / step_seconds / 1e9}


def torch_figures(config, batch: np.ndarray, steps: int) -> dict | None:
    """The same train step in the repository's independent PyTorch reference, if available."""
    reference = REPO / "tests" / "torch_reference_4dmot.py"
    if importlib.util.find_spec("torch") is None or not reference.exists():
        return None
    import torch
    spec = importlib.util.spec_from_file_location("torch_reference_4dmot", reference)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_num_threads(os.cpu_count() or 1)
    m = config.model
    model = module.Reference4DMoT(channels=tuple(m.channels), num_res_blocks=m.num_res_blocks,
                                  code_dim=m.code_dim, codebook_size=m.codebook_size,
                                  num_groups=m.num_groups, dilation_reference=m.dilation_reference)
    with torch.no_grad():
        model.vq.codebook.normal_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-4)
    x = torch.from_numpy((batch - batch.mean()) / batch.std()).float()
    beta = config.quantizer.beta

    def step():
        z = model.encode(x)
        q, _ = model.quantize(z)
        recon = model.decode(z + (q - z).detach())
        loss = (recon - x).abs().mean() + beta * ((z - q.detach()) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = _time(step, steps)
    return {"train_samples_per_s": batch.shape[0] / seconds, "train_step_s": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="paper")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    config = load_config(f"{REPO / 'configs' / '4dmot.py'}:{args.variant}")
    config.mesh = {"data": 1}
    source = SyntheticMotionSource(args.batch, (args.frames + 20, args.frames + 40))
    batch = make_batches(source, args.batch, (args.frames,), (1,), seed=0)[0]["motion"]

    peak = matmul_peak_gflops()
    jx = jax_figures(config, batch, args.steps)
    pt = None if args.no_torch else torch_figures(config, batch, args.steps)

    print(f"4DMoT `{args.variant}`, batch {args.batch} x {args.frames} frames, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}")
    rows = [("JAX train step", f"{jx['train_samples_per_s']:.2f} samples/s",
             f"{jx['train_step_s']:.2f} s/step"),
            ("JAX inference", f"{jx['infer_clips_per_s']:.2f} clips/s", ""),
            ("train step FLOPs (XLA)", f"{jx['train_step_gflop']:.1f} GFLOP", ""),
            ("achieved", f"{jx['train_gflops_per_s']:.1f} GFLOP/s",
             f"{100 * jx['train_gflops_per_s'] / peak:.0f}% of peak"),
            ("f32 matmul peak (measured)", f"{peak:.1f} GFLOP/s", "")]
    if pt:
        rows.append(("PyTorch reference train step", f"{pt['train_samples_per_s']:.2f} samples/s",
                     f"{pt['train_step_s']:.2f} s/step"))
        rows.append(("JAX / PyTorch", f"{jx['train_samples_per_s'] / pt['train_samples_per_s']:.2f}x",
                     ""))
    width = max(len(r[0]) for r in rows)
    for name, value, extra in rows:
        print(f"  {name:<{width}}  {value:>20}  {extra}")


if __name__ == "__main__":
    main()
