"""Benchmark of the MV-DiT families against their PyTorch references on the local device.

    python -m mtvjax.bench.mvdit [--repeats 7] [--no-torch] [--attention NAME]
    python -m mtvjax.bench.mvdit --profile [cogvideox|wan] [--repeats 3] [--top 25]

At a mid size (13 latent frames of 16×16 → 832 video tokens and 312 motion tokens, 4 layers,
512 wide, batch 1, float32) it times, for the 7B family (`cogvideox`, 8 heads × 64) and the 17B
family (`wan`, 4 heads × 128, one motion block, 512 text + 257 image context rows), the jitted
forward and a jitted train step (MSE to zeros + AdamW, state buffers donated), and the same in
the repository's PyTorch reference (`tests/torch_reference_mvdit{7b,17b}.py`). JAX and torch
calls alternate in one process and the medians are printed with the spread seen (min–max), the
speed ratios (> 1: JAX faster) and the fraction of the machine's float32 matmul peak (a
2048² `jnp.dot`, measured in the same run) that the step's XLA flop count achieves. Last, the 7B
train-step compile time at 8 and 32 layers (the layers run under `nn.scan`: it should hardly grow).

`--profile [cogvideox|wan]` instead profiles a family's mid-size train step
(`mtvjax.bench.mvdit_profile`): time by pass, op kind and block submodule, the top ops with their
model path, and HLO op counts.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtvjax.bench import mvdit_profile
from mtvjax.bench.common import REPO, torch_reference
from mtvjax.config import load_config
from mtvjax.host_memory import ENV as HOST_MEMORY_ENV, keep_freed_host_memory
from mtvjax.models.mvdit.cogvideox import model as mv
from mtvjax.models.mvdit.wan import config as wan_config
from mtvjax.models.mvdit.wan import model as wan

FRAMES, HEIGHT, WIDTH, BATCH, LAYERS = 13, 16, 16, 1, 4
JOINTS = 24
# scan_unroll = LAYERS: at 4 layers a straight-line program beats the scan's stacked residuals.
COGVIDEOX_MID = dict(num_layers=LAYERS, num_heads=8, head_dim=64, time_embed_dim=128,
                     scan_unroll=LAYERS)
WAN_MID = dict(dim=512, num_heads=4, num_layers=LAYERS, ffn_dim=2048, motion_dim=512,
               scan_unroll=LAYERS)
TORCH_FIELDS = ("dim", "num_heads", "num_layers", "ffn_dim", "motion_dim")
PEAK_SIZE = 2048


def cogvideox_model(attention: str | None, **fields):
    config = load_config(f"{REPO / 'configs' / 'mvdit.py'}:tiny")
    config.model.update(dict(COGVIDEOX_MID, **fields))
    if attention:
        config.model.attention_implementation = attention
    width = config.model.num_heads * config.model.head_dim
    config.model.uncond_motion_shape = (FRAMES * JOINTS, width)
    return mv.from_config(config), config.model


def wan_model_config(attention: str | None):
    return wan_config.wan_config("tiny17b", **WAN_MID, attention=attention)


def _normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# One family's JAX and torch calls: each returns (forward(), train_step(), flops of each)
# ----------------------------------------------------------------------------------------------

def jax_calls(apply, params, inputs, target):
    """Blocking forward / train-step thunks of a model `apply(params, inputs)`, and the XLA flop
    counts of both."""
    tx = optax.adamw(2e-5, b1=0.9, b2=0.99, weight_decay=1e-2)

    def loss(p):
        return jnp.mean((apply(p, inputs) - target) ** 2)

    def train_step(p, opt_state):
        value, grads = jax.value_and_grad(loss)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

    state = {"p": params, "o": tx.init(params)}
    step = jax.jit(train_step, donate_argnums=(0, 1)).lower(state["p"], state["o"]).compile()
    forward = jax.jit(apply).lower(params, inputs).compile()

    def run_step():
        state["p"], state["o"], value = step(state["p"], state["o"])
        value.block_until_ready()

    def run_forward():
        forward(state["p"], inputs).block_until_ready()

    return run_forward, run_step, (flops(forward), flops(step)), step


def flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float((analysis or {}).get("flops", float("nan")))


def torch_calls(model, forward):
    """Forward (no grad) / train-step (MSE to zeros, AdamW) thunks of a torch model whose
    `forward()` closure runs it on fixed inputs."""
    import torch
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.99),
                                  weight_decay=1e-2)

    def run_forward():
        with torch.no_grad():
            forward()

    def run_step():
        loss = (forward() ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return run_forward, run_step


def cogvideox_calls(attention, with_torch: bool):
    model, fields = cogvideox_model(attention)
    rng = np.random.default_rng(0)
    shape = (BATCH, FRAMES, HEIGHT, WIDTH, 16)
    x = dict(latents=_normal(rng, *shape), ref_latents=_normal(rng, *shape),
             timesteps=np.full((BATCH,), 500, np.int32),
             motion_tokens=_normal(rng, BATCH, FRAMES * JOINTS, model.width))
    params = mv.init_params(model, jax.random.PRNGKey(0))
    jx = jax_calls(lambda p, inp: model.apply({"params": p}, **inp), params,
                   jax.tree.map(jnp.asarray, x), jnp.zeros(shape, jnp.float32))
    ref = torch_reference("torch_reference_mvdit7b") if with_torch else None
    if ref is None:
        return jx, None
    import torch
    tm = ref.ReferenceMVDiT7B(num_layers=fields.num_layers, heads=fields.num_heads,
                              head_dim=fields.head_dim, time_embed_dim=fields.time_embed_dim,
                              text_embed_dim=fields.text_embed_dim,
                              uncond_shape=tuple(fields.uncond_motion_shape))
    hs = torch.from_numpy(np.concatenate([x["latents"], x["ref_latents"]], -1)
                          ).permute(0, 1, 4, 2, 3).contiguous()
    motion, t = torch.from_numpy(x["motion_tokens"]), torch.from_numpy(x["timesteps"]).long()
    p = fields.patch_size
    vis = ref.vision_rope(FRAMES, HEIGHT // p, WIDTH // p, fields.head_dim)
    mot = ref.motion_rope(FRAMES, np.zeros((JOINTS, 3), np.float32), fields.head_dim)
    return jx, torch_calls(tm, lambda: tm(hs, t, motion, vis, mot))


def wan_calls(attention, with_torch: bool):
    config = wan_model_config(attention)
    model = wan.MVDiTWan(config)
    rng = np.random.default_rng(0)
    x = dict(x=_normal(rng, BATCH, FRAMES, HEIGHT, WIDTH, 16),
             y=_normal(rng, BATCH, FRAMES, HEIGHT, WIDTH, 20),
             t=np.full((BATCH,), 500.0, np.float32),
             text=_normal(rng, BATCH, config.text_len, config.text_dim),
             clip=_normal(rng, BATCH, 257, config.image_dim),
             motion=_normal(rng, BATCH, FRAMES * JOINTS, config.motion_dim))
    params = wan.init_params(config, jax.random.PRNGKey(0))

    def apply(p, inp):
        return model.apply({"params": p}, inp["x"], inp["t"], inp["text"], inp["clip"],
                           inp["motion"], y=inp["y"])
    jx = jax_calls(apply, params, jax.tree.map(jnp.asarray, x), jnp.zeros_like(x["x"]))
    ref = torch_reference("torch_reference_mvdit17b") if with_torch else None
    if ref is None:
        return jx, None
    import torch
    tm = ref.Transformer17B(**dict(ref.TINY, **{k: WAN_MID[k] for k in TORCH_FIELDS}))
    channels_first = {k: torch.from_numpy(x[k].transpose(0, 4, 1, 2, 3).copy()) for k in "xy"}
    text = [torch.from_numpy(row) for row in x["text"]]
    clip, motion, t = (torch.from_numpy(x[k]) for k in ("clip", "motion", "t"))
    cos_sin = ref.motion_rope_tables(FRAMES, wan_config.RELEASED_CENTRED_JOINTS, config.head_dim)
    seq_len = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
    return jx, torch_calls(tm, lambda: tm(channels_first["x"], t, text, seq_len, clip,
                                          channels_first["y"], motion, cos_sin))


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

def interleaved_seconds(calls: dict, repeats: int) -> dict:
    """{name: per-call seconds} of `repeats` rounds in which every call runs once, in turn (after
    one warm-up round), so load changes hit all of them alike."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def matmul_peak_flops(repeats: int = 5) -> float:
    """float32 matmul rate of a `PEAK_SIZE`² `jnp.dot` (best of `repeats`), flop/s."""
    a = jnp.ones((PEAK_SIZE, PEAK_SIZE), jnp.float32)
    dot = jax.jit(jnp.dot).lower(a, a).compile()
    dot(a, a).block_until_ready()
    best = min(_seconds(lambda: dot(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * PEAK_SIZE ** 3 / best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _stat(ts) -> str:
    return f"{np.median(ts) * 1e3:7.1f} ms ({min(ts) * 1e3:.0f}–{max(ts) * 1e3:.0f})"


def family_times(make_calls, attention, repeats: int, with_torch: bool):
    """({call name: seconds}, {"train" / "forward": XLA flops}) of one family, interleaved."""
    (jax_fwd, jax_step, (fwd_flops, step_flops), _), pt = make_calls(attention, with_torch)
    calls = {"jax train": jax_step, "jax forward": jax_fwd}
    if pt:
        calls.update({"torch train": pt[1], "torch forward": pt[0]})
    return interleaved_seconds(calls, repeats), {"train": step_flops, "forward": fwd_flops}


def family_lines(name: str, times: dict, work: dict, peak: float) -> list[str]:
    lines = [f"  {name}"]
    for kind in ("train", "forward"):
        jx = np.median(times[f"jax {kind}"])
        line = (f"    {kind:<8} JAX {_stat(times[f'jax {kind}'])} "
                f"{work[kind] / jx / peak:4.0%} of peak")
        if f"torch {kind}" in times:
            th = np.median(times[f"torch {kind}"])
            line += (f" | PyTorch {_stat(times[f'torch {kind}'])} "
                     f"{work[kind] / th / peak:4.0%} of peak | JAX speed {th / jx:.2f}x")
        lines.append(line + f"   [{work[kind] / 1e9:.1f} GFLOP]")
    return lines


def compile_seconds(num_layers: int) -> float:
    """Lower + compile time of the 7B train step (abstract inputs: nothing is allocated)."""
    model, _ = cogvideox_model(None, num_layers=num_layers, scan_unroll=1)
    params = jax.eval_shape(lambda: mv.init_params(model, jax.random.PRNGKey(0)))
    tx = optax.adamw(2e-5)
    shape = (BATCH, 3, HEIGHT, WIDTH, 16)
    x = dict(latents=jnp.zeros(shape), timesteps=jnp.zeros((BATCH,), jnp.int32),
             ref_latents=jnp.zeros(shape),
             motion_tokens=jnp.zeros((BATCH, 3 * JOINTS, model.width)))

    def step(p, o):
        grads = jax.grad(lambda p: jnp.mean(model.apply({"params": p}, **x) ** 2))(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o

    start = time.perf_counter()
    jax.jit(step).lower(params, jax.eval_shape(tx.init, params)).compile()
    return time.perf_counter() - start


FAMILY_CALLS = {"cogvideox": cogvideox_calls, "wan": wan_calls}


def profile(family: str, attention, calls: int, top: int) -> None:
    (_, run_step, _, compiled) = FAMILY_CALLS[family](attention, with_torch=False)[0]
    for _ in range(2):
        run_step()
    costs = mvdit_profile.host_costs(run_step, calls)
    seconds = mvdit_profile.trace_op_seconds(run_step, calls)
    text = compiled.as_text()
    rows = mvdit_profile.op_table(seconds, mvdit_profile.op_metadata(text))
    print(f"{family} mid-size train step, profile over {calls} steps:")
    print(mvdit_profile.host_cost_line(costs, compiled.memory_analysis().temp_size_in_bytes))
    print("\n".join(mvdit_profile.summary_lines(rows, mvdit_profile.hlo_counts(text), top)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--attention", default=None,
                        help="registered attention kernel for both families (default: auto)")
    parser.add_argument("--profile", choices=sorted(FAMILY_CALLS), nargs="?", const="cogvideox",
                        help="profile a family's mid-size train step (default cogvideox) "
                             "instead of timing")
    parser.add_argument("--top", type=int, default=25, help="ops listed by --profile")
    args = parser.parse_args()
    kept = keep_freed_host_memory()
    print(f"MV-DiT mid size: batch {BATCH}, {FRAMES} latent frames of {HEIGHT}x{WIDTH}, "
          f"{LAYERS} layers, width 512, float32; {jax.devices()[0].platform}, jax "
          f"{jax.__version__}, attention {args.attention or 'auto'}; freed host memory "
          + ("kept (mtvjax.host_memory)" if kept else f"returned to the OS ({HOST_MEMORY_ENV}=0 "
                                                       "or not glibc)"))
    if args.profile:
        profile(args.profile, args.attention, args.repeats, args.top)
        return
    peak, measured = 0.0, []
    for name, make_calls in (("7B family (cogvideox, 8 heads x 64)", cogvideox_calls),
                             ("17B family (wan, 4 heads x 128)", wan_calls)):
        peak = max(peak, matmul_peak_flops())        # best seen: load only ever lowers it
        measured.append((name, *family_times(make_calls, args.attention, args.repeats,
                                             not args.no_torch)))
    peak = max(peak, matmul_peak_flops())
    print(f"  float32 matmul peak ({PEAK_SIZE}² jnp.dot, best of 3 measurements): "
          f"{peak / 1e9:.0f} GFLOP/s; times are medians of {args.repeats} interleaved calls "
          "(min–max)")
    for name, times, work in measured:
        print("\n".join(family_lines(name, times, work, peak)))
    c8, c32 = compile_seconds(8), compile_seconds(32)
    print(f"  7B train-step compile time: 8 layers {c8:.1f} s, 32 layers {c32:.1f} s, "
          f"ratio {c32 / c8:.2f}")


if __name__ == "__main__":
    main()
