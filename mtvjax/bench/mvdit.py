"""Benchmark of MV-DiT-7B-family models on the local device: forward, train step, compile time.

    python -m mtvjax.bench.mvdit [--steps 3] [--no-torch]

For the `tiny` preset and a mid-size one (8 layers, 8 heads x 64 = 512 wide) it times the jitted
forward and a jitted train step (v-prediction MSE + AdamW), prints the compile time of the train
step at 8 and 32 layers (the layers run under `nn.scan`, so it should hardly grow), and — when
torch and the repository's PyTorch reference (`tests/torch_reference_mvdit7b.py`) are
available — the same forward and train step in PyTorch, with the ratios.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtvjax.bench.common import REPO, median_seconds, torch_reference
from mtvjax.config import load_config
from mtvjax.models.mvdit.cogvideox import model as mv

FRAMES, HEIGHT, WIDTH, BATCH = 3, 16, 16, 1
PRESETS = {"tiny": {}, "mid": dict(num_layers=8, num_heads=8, time_embed_dim=128)}


def make_model(preset: dict):
    config = load_config(f"{REPO / 'configs' / 'mvdit.py'}:tiny")
    config.model.update(preset)
    width = config.model.num_heads * config.model.head_dim
    config.model.uncond_motion_shape = (FRAMES * 24, width)
    return mv.from_config(config), config


def make_inputs(width: int):
    rng = np.random.default_rng(0)
    shape = (BATCH, FRAMES, HEIGHT, WIDTH, 16)
    return dict(latents=jnp.asarray(rng.normal(size=shape), jnp.float32),
                ref_latents=jnp.asarray(rng.normal(size=shape), jnp.float32),
                timesteps=jnp.full((BATCH,), 500, jnp.int32),
                motion_tokens=jnp.asarray(rng.normal(size=(BATCH, FRAMES * 24, width)), jnp.float32))


def jax_step_fns(model):
    tx = optax.adamw(2e-5, b1=0.9, b2=0.99, weight_decay=1e-2)

    def loss(params, x, target):
        return jnp.mean((model.apply({"params": params}, **x) - target) ** 2)

    def train_step(params, opt_state, x, target):
        value, grads = jax.value_and_grad(loss)(params, x, target)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return tx, jax.jit(lambda p, x: model.apply({"params": p}, **x)), train_step


def jax_figures(preset: dict, repeats: int) -> dict:
    model, _ = make_model(preset)
    params = mv.init_params(model, jax.random.PRNGKey(0))
    x = make_inputs(model.width)
    target = jnp.zeros_like(x["latents"])
    tx, forward, train_step = jax_step_fns(model)
    opt_state = tx.init(params)
    step = jax.jit(train_step)
    state = {"p": params, "o": opt_state}

    def run_step():
        state["p"], state["o"], value = step(state["p"], state["o"], x, target)
        value.block_until_ready()

    return {"forward_s": median_seconds(lambda: forward(params, x).block_until_ready(), repeats),
            "train_step_s": median_seconds(run_step, repeats)}


def compile_seconds(num_layers: int) -> float:
    """Lower + compile time of the train step (abstract inputs: nothing is allocated)."""
    model, _ = make_model(dict(num_layers=num_layers))
    params = jax.eval_shape(lambda: mv.init_params(model, jax.random.PRNGKey(0)))
    tx, _, train_step = jax_step_fns(model)
    opt_state = jax.eval_shape(tx.init, params)
    x = make_inputs(model.width)
    start = time.perf_counter()
    jax.jit(train_step).lower(params, opt_state, x, jnp.zeros_like(x["latents"])).compile()
    return time.perf_counter() - start


def torch_figures(preset: dict, repeats: int) -> dict | None:
    ref = torch_reference("torch_reference_mvdit7b")
    if ref is None:
        return None
    import torch
    _, config = make_model(preset)
    m = config.model
    model = ref.ReferenceMVDiT7B(num_layers=m.num_layers, heads=m.num_heads, head_dim=m.head_dim,
                                 time_embed_dim=m.time_embed_dim, text_embed_dim=m.text_embed_dim,
                                 uncond_shape=tuple(m.uncond_motion_shape))
    x = make_inputs(m.num_heads * m.head_dim)
    hs = torch.from_numpy(np.concatenate([np.asarray(x["latents"]), np.asarray(x["ref_latents"])],
                                         -1)).permute(0, 1, 4, 2, 3).contiguous()
    motion = torch.from_numpy(np.array(x["motion_tokens"]))
    t = torch.from_numpy(np.array(x["timesteps"])).long()
    p = m.patch_size
    vis = ref.vision_rope(FRAMES, HEIGHT // p, WIDTH // p)
    mot = ref.motion_rope(FRAMES, np.zeros((24, 3), np.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.99), weight_decay=1e-2)

    def forward():
        with torch.no_grad():
            model(hs, t, motion, vis, mot)

    def train_step():
        loss = (model(hs, t, motion, vis, mot) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {"forward_s": median_seconds(forward, repeats),
            "train_step_s": median_seconds(train_step, repeats)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    print(f"MV-DiT (7B family), batch {BATCH}, {FRAMES} latent frames of {HEIGHT}x{WIDTH}, "
          f"{jax.devices()[0].platform}, jax {jax.__version__}")
    for name, preset in PRESETS.items():
        jx = jax_figures(preset, args.steps)
        pt = None if args.no_torch else torch_figures(preset, args.steps)
        line = (f"  {name:<5} JAX forward {jx['forward_s'] * 1e3:8.1f} ms   "
                f"train step {jx['train_step_s'] * 1e3:8.1f} ms")
        if pt:
            line += (f" | PyTorch forward {pt['forward_s'] * 1e3:8.1f} ms   train step "
                     f"{pt['train_step_s'] * 1e3:8.1f} ms | speed-up forward "
                     f"{pt['forward_s'] / jx['forward_s']:.2f}x, train "
                     f"{pt['train_step_s'] / jx['train_step_s']:.2f}x")
        print(line)
    c8, c32 = compile_seconds(8), compile_seconds(32)
    print(f"  train-step compile time: 8 layers {c8:.1f} s, 32 layers {c32:.1f} s, "
          f"ratio {c32 / c8:.2f}")


if __name__ == "__main__":
    main()
