"""Benchmark of the 4DMoT tokenizer: training and inference throughput, FLOPs, fraction of peak.

    python -m mtvjax.bench.tokenizer [--variant paper] [--batch 4] [--frames 49] [--steps 5]

Prints samples/s of one jitted train step and clips/s of inference (encode + quantise + decode)
at the given batch, with the model's convolutions as window-exact matrix products (the default,
`model.conv_impl="matmul"`) and, for the ratio, as XLA convolutions (`"lax"`). The model FLOPs
of a step are XLA's cost analysis of the convolution formulation, which counts only the taps
that reach real frames and joints; the achieved GFLOP/s divide them by the measured step time
and are compared with an f32 matmul peak measured on this machine in the same run, before and
after the steps: the median over repeats of the best square size, as the step times are medians
too (the best single call is printed beside it). When torch and the repository's PyTorch reference
(`tests/torch_reference_4dmot.py`) are available, the same train step runs in PyTorch too.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from mtvjax.bench.common import REPO, call_seconds, median_seconds, torch_reference
from mtvjax.config import load_config
from mtvjax.data.loader import make_batches
from mtvjax.data.stats import compute_stats
from mtvjax.data.synthetic_motion import SyntheticMotionSource
from mtvjax.host_memory import keep_freed_host_memory
from mtvjax.train.fourdmot_trainer import FourDMoTTrainer

def matmul_peak_gflops(sizes=(1024, 2048, 4096), repeats: int = 15) -> tuple[float, float]:
    """This machine's f32 matmul peak: (best size's median GFLOP/s, best single call's GFLOP/s).

    The median, like the step times it is compared with, is what the machine sustains; the best
    single call shows how far above that a lucky call can get.
    """
    median, best = 0.0, 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        matmul = jax.jit(lambda a: a @ a)
        times = call_seconds(lambda: matmul(a).block_until_ready(), repeats)
        median = max(median, 2 * n ** 3 / float(np.median(times)) / 1e9)
        best = max(best, 2 * n ** 3 / min(times) / 1e9)
    return median, best


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def jax_figures(config, batch: np.ndarray, steps: int) -> dict:
    """Train-step and inference figures of `config` (one device)."""
    trainer = FourDMoTTrainer(config, jax.devices()[:1])
    state = trainer.init_state(compute_stats([batch.reshape(-1, 24, 3)]))
    device_batch = trainer.device_batch({"motion": batch, "skipped": np.array(0)})
    rng = jax.random.PRNGKey(1)
    compiled = trainer.train_step.lower(state, device_batch, rng).compile()
    flops = _flops(compiled)

    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], device_batch, rng)
        jax.block_until_ready(metrics["loss"])

    step_seconds = median_seconds(step, steps)
    infer = jax.jit(trainer.eval_step)
    infer_seconds = median_seconds(lambda: jax.block_until_ready(infer(holder["state"], device_batch)), steps)
    n = batch.shape[0]
    return {"train_samples_per_s": n / step_seconds, "train_step_s": step_seconds,
            "infer_clips_per_s": n / infer_seconds, "train_step_gflop": flops / 1e9}


def with_conv_impl(config, impl: str):
    config = config.copy_and_resolve_references()
    config.model.conv_impl = impl
    return config


def torch_figures(config, batch: np.ndarray, steps: int) -> dict | None:
    """The same train step in the repository's independent PyTorch reference, if available."""
    module = torch_reference("torch_reference_4dmot")
    if module is None:
        return None
    import torch
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

    seconds = median_seconds(step, steps)
    return {"train_samples_per_s": batch.shape[0] / seconds, "train_step_s": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="paper")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    kept = keep_freed_host_memory()

    config = load_config(f"{REPO / 'configs' / '4dmot.py'}:{args.variant}")
    config.mesh = {"data": 1}
    source = SyntheticMotionSource(args.batch, (args.frames + 20, args.frames + 40))
    batch = make_batches(source, args.batch, (args.frames,), (1,), seed=0)[0]["motion"]

    before = matmul_peak_gflops()
    jx = jax_figures(with_conv_impl(config, "matmul"), batch, args.steps)
    lax = jax_figures(with_conv_impl(config, "lax"), batch, args.steps)
    peak, best = map(max, zip(before, matmul_peak_gflops()))  # before and after the steps
    pt = None if args.no_torch else torch_figures(config, batch, args.steps)

    model_gflop = lax["train_step_gflop"]
    achieved = model_gflop / jx["train_step_s"]
    print(f"4DMoT `{args.variant}`, batch {args.batch} x {args.frames} frames, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}, "
          f"freed host memory {'kept' if kept else 'returned to the OS'}")
    rows = [("JAX train step", f"{jx['train_samples_per_s']:.2f} samples/s",
             f"{jx['train_step_s']:.2f} s/step"),
            ("JAX inference", f"{jx['infer_clips_per_s']:.2f} clips/s", ""),
            ("JAX train step, XLA convolutions", f"{lax['train_samples_per_s']:.2f} samples/s",
             f"{lax['train_step_s']:.2f} s/step"),
            ("JAX inference, XLA convolutions", f"{lax['infer_clips_per_s']:.2f} clips/s", ""),
            ("window matmuls / XLA convolutions",
             f"{jx['train_samples_per_s'] / lax['train_samples_per_s']:.2f}x", "train step"),
            ("model FLOPs per step (XLA)", f"{model_gflop:.2f} GFLOP",
             "cost analysis, convolution formulation"),
            ("FLOPs the matmul step runs (XLA)", f"{jx['train_step_gflop']:.2f} GFLOP",
             "incl. zero joint padding"),
            ("achieved", f"{achieved:.1f} GFLOP/s", f"{100 * achieved / peak:.0f}% of peak, "
             f"{100 * achieved / best:.0f}% of the best single matmul"),
            ("f32 matmul peak (measured)", f"{peak:.1f} GFLOP/s", "median of the best size"),
            ("best single matmul call", f"{best:.1f} GFLOP/s", "")]
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
