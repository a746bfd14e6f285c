"""4DMoT train state, optimiser and the pure train/eval steps.

The model, its variables and its forward pass come from `mtvjax.models.fourdmot`; this module
adds only what training needs.

`train_step(state, batch, rng) -> (state, metrics)` is a pure function, jitted by the trainer:
encode → (first batch only) fill the codebook → quantise with straight-through gradients →
decode → L1 + β·commitment → AdamW on the encoder/decoder → EMA update and periodic dead-code
reset of the quantizer state. Motion enters in millimetres; normalisation uses the statistics
stored in the state, so a checkpoint is self-contained.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mtvjax.evaluate.metrics import code_histogram, mpjpe, pa_mpjpe, perplexity
from mtvjax.models.fourdmot import quantizer as vq
from mtvjax.models.fourdmot.build import init_variables, quantizer_settings
from mtvjax.models.fourdmot.forward import (forward, model_input, model_output_mm,
                                            quantize_tokens, switches)
from mtvjax.models.fourdmot.model import FourDMoT


class TrainState(flax.struct.PyTreeNode):
    step: jnp.ndarray
    params: Any
    opt_state: Any
    quantizer: dict           # the `quantizer` collection (codebook, EMA sums/counts, counters)
    stats: dict               # {'mean', 'std'} [24, 3] normalisation statistics, millimetres
    rng: jax.Array            # root key; step keys are fold_in(rng, step)
    skipped_samples: jnp.ndarray  # samples replaced by the loader so far


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
    """Warm-up, the base rate, then the final rate for the last `final_fraction` of training."""
    decay_start = int(round(num_steps * (1.0 - optim_config.final_fraction)))
    warmup = optim_config.warmup_steps
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim_config.learning_rate, max(warmup, 1)),
         optax.constant_schedule(optim_config.learning_rate),
         optax.constant_schedule(optim_config.final_learning_rate)],
        boundaries=[warmup, max(decay_start, warmup)])


def make_optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    adamw = optax.adamw(learning_rate_schedule(o, config.train.num_steps), b1=o.b1, b2=o.b2,
                        weight_decay=o.weight_decay)
    if o.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw)
    return adamw


def init_state(config, model: FourDMoT, tx, stats: dict, rng: jax.Array) -> TrainState:
    """Fresh state; pure in its inputs, so `jax.eval_shape(init_state, ...)` gives its structure."""
    init_rng, root = jax.random.split(rng)
    params, quantizer = init_variables(model, init_rng)
    return TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params),
                      quantizer=quantizer,
                      stats={k: jnp.asarray(v, jnp.float32) for k, v in stats.items()},
                      rng=root, skipped_samples=jnp.array(0, jnp.int32))


def abstract_state(config, model: FourDMoT, tx) -> TrainState:
    """Shapes and dtypes of `init_state` for this config, without allocating anything."""
    stats = {"mean": jnp.zeros((24, 3), jnp.float32), "std": jnp.ones((24, 3), jnp.float32)}
    return jax.eval_shape(lambda rng: init_state(config, model, tx, stats, rng),
                          jax.random.PRNGKey(0))


def make_train_step(config, model: FourDMoT, tx):
    settings = quantizer_settings(config)
    beta, sw = config.quantizer.beta, switches(config)
    schedule = learning_rate_schedule(config.optim, config.train.num_steps)
    k = config.model.codebook_size

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        init_rng, reset_rng = jax.random.split(rng)

        def loss_fn(params):
            x, _ = model_input(batch["motion"], state.stats, sw)
            z = model.apply({"params": params}, x, method=FourDMoT.encode)
            flat = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1])
            qstate = (vq.initialize_from_batch(state.quantizer, flat, init_rng, settings)
                      if sw.quantize else state.quantizer)
            q, indices, commitment = quantize_tokens(qstate["codebook"], z, sw)
            recon = model.apply({"params": params}, q, method=FourDMoT.decode)
            l1 = jnp.mean(jnp.abs(recon - x))
            return l1 + beta * commitment, (qstate, z, indices, l1, commitment)

        (loss, (qstate, z, indices, l1, commitment)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if sw.quantize:
            qstate, qmetrics = vq.update_state(qstate, z, indices, reset_rng, settings)
        else:
            qmetrics = {"dead_codes": jnp.array(0), "codes_reset": jnp.array(0),
                        "ever_used": jnp.array(0)}
        histogram = code_histogram(indices, k)
        metrics = {"loss": loss, "recon": l1, "commit": commitment,
                   "perplexity": perplexity(histogram), "lr": schedule(state.step),
                   "grad_norm": optax.tree.norm(grads), "code_histogram": histogram, **qmetrics}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  quantizer=qstate,
                                  skipped_samples=state.skipped_samples + batch["skipped"].sum())
        return new_state, metrics

    return train_step


def make_eval_step(config, model: FourDMoT):
    """`eval_step(state, batch) -> metrics` with the current codebook, no state change."""
    sw, k = switches(config), config.model.codebook_size

    def eval_step(state: TrainState, batch: dict):
        out = forward(model, state.params, state.quantizer["codebook"], batch["motion"],
                      state.stats, sw)
        recon_mm = model_output_mm(out["recon"], out["first"], state.stats, sw)
        target_mm = batch["motion"][..., :sw.coord_dim]
        return {"recon": jnp.mean(jnp.abs(out["recon"] - out["input"])),
                "commit": out["commitment"],
                "mpjpe_mm": mpjpe(recon_mm, target_mm),
                "pa_mpjpe_mm": pa_mpjpe(recon_mm, target_mm),
                "code_histogram": code_histogram(out["indices"], k)}

    return eval_step
