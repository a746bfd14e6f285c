"""MV-DiT train state, optimiser, losses per family and the pure train step.

`make_train_step(config, model, tx, tokenizer)` returns `train_step(state, batch, frozen)`:

* **batch layout.** Every array is `[k, b, ...]`: k = `optim.grad_accum_steps` micro-batches of b
  samples (b is sharded over the mesh's `batch` axes), plus `sample_index` `[k, b]`, the sample's
  position in the global batch. All randomness of a sample (noise, timestep, condition dropout)
  comes from `fold_in(fold_in(state.rng, step), sample_index)`, so a step's result does not
  depend on the mesh, the number of processes or how the batch is cut into micro-batches.
* **posterior sampling.** With `batch["latents_logvar"]` (records holding the VAE posterior)
  the clean sample is x0 = latents + exp(logvar/2)·ε_post, ε_post from the sample's own key (as
  above); without it x0 = latents. The records already hold the posterior in the model's latent
  space (scaled by the VAE's scaling factor for the 7B, normalised by the latent mean/std for the
  17B), so no scaling happens here.
* **motion tokens.** `batch["motion_tokens"]` `[k, b, F·24, w]` when precomputed; otherwise the
  frozen 4DMoT (`tokenizer`, parameters in `frozen`) tokenises `batch["motion"]` inside the step
  (quantised codebook vectors, no gradient).
* **ISA conditioning.** With `model.conditioning="isa"` no tokens are used (nor a 4DMoT): the
  model takes `batch["motion"]` `[k, b, T, 24, 3]` (mm, T = 4·(F − 1) + 1) as `motion_mm`, and
  motion dropout masks the dropped samples' points (the same drop flag).
* **motion joints.** With `model.motion_pe="dynamic"` the model's `motion_joints` are
  `batch["first_joints"]` `[k, b, 24, 3]` (mm; else `batch["motion"][:, :, 0]`); other switches
  take no joints.
* **losses.** cogvideox: v-prediction MSE on the CogVideoX-5B schedule (t ~ U{0..999},
  x_t = √ᾱ·x0 + √(1−ᾱ)·ε, target √ᾱ·ε − √(1−ᾱ)·x0; the finetuning scripts' x0 loss weighted by
  1/(1−ᾱ) is this same quantity). wan: flow matching (σ drawn from the 1000 shifted training
  sigmas, x_t = (1−σ)·x0 + σ·ε, target ε − x0, model time σ·1000).
* **condition dropout.** With `train.motion_drop_prob` a sample's motion tokens are replaced by
  the model's learnable unconditional tokens (`motion_drop`); with
  `train.text_drop_prob` (wan only; the 7B has no text input) its text is dropped
  (`text_lens` = 0: every row zero before the text MLP).
* **trainable mask.** `optim.trainable` "all", "motion" (the motion attention and the
  unconditional motion tokens; with ISA conditioning the ISA blocks and point embedding) or
  "lora": `state.params` then also holds the adapters `params["lora"]` (mtvjax.train.lora), the
  only trained leaves; the loss merges them into the frozen model (W + (alpha/rank)·A@B).
  Frozen parameters are not differentiated, have no optimiser state and are carried through
  bit-identically.
* **optimiser.** Gradients (float32, averaged over micro-batches) → global-norm clipping →
  AdamW(β 0.9/0.99, weight decay) with linear warm-up then a constant rate. The model computes in
  `train.dtype` (bf16 for 7b/17b) from the float32 master parameters.
* **non-finite steps.** When the loss or the gradient norm is not finite the parameters and
  optimiser state are left unchanged and `skipped_steps` counts the step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from mtvjax.models.mvdit import isa_conditioning as ISA
from mtvjax.models.mvdit import registry
from mtvjax.diffusion import schedules as S
from mtvjax.models.fourdmot.tokenizer import FrozenTokenizer
from mtvjax.train import lora

TRAINABLE = ("all", "motion", "lora")
NUM_JOINTS = 24


class TrainState(flax.struct.PyTreeNode):
    step: jnp.ndarray             # batches consumed (applied + skipped steps)
    params: Any                   # all model parameters, float32 master copy
    opt_state: Any                # optimiser state of the trainable parameters only
    rng: jax.Array                # root key; step keys are fold_in(rng, step)
    skipped_steps: jnp.ndarray    # steps whose loss or gradient was not finite


def uses_isa(config) -> bool:
    """Whether the model is conditioned by interspatial attention on the raw motion."""
    return ISA.settings_of(config.model) is not None


def build_model(config):
    """The model in the train step's compute dtype (`train.dtype`), float32 parameters."""
    dtype = config.train.get("dtype", config.get("dtype", "float32"))
    return registry.of(config).build_model(config, dtype)


def motion_width(config) -> int:
    """Width of the motion tokens the model takes (cogvideox: D; wan: motion_dim)."""
    return registry.of(config).motion_width(config.model)


def init_variables(config, model, rng) -> dict:
    """Boxed (logically partitioned) `params` of a fresh model."""
    return registry.of(config).init_variables(model, rng)


# ----------------------------------------------------------------------------------------------
# Trainable / frozen split
# ----------------------------------------------------------------------------------------------


def trainable_predicate(config) -> Callable[[tuple], bool]:
    which = config.optim.get("trainable", "all")
    if which not in TRAINABLE:
        raise ValueError(f"optim.trainable must be one of {TRAINABLE}, got {which!r}")
    if which == "all":
        return lambda path: True
    if which == "lora":
        return lambda path: path[0] == lora.KEY
    return registry.of(config).trainable


def split_params(params, predicate) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts holding only their own leaves."""
    flat = traverse_util.flatten_dict(params)
    trainable = {k: v for k, v in flat.items() if predicate(k)}
    frozen = {k: v for k, v in flat.items() if not predicate(k)}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(*trees) -> dict:
    flat = {}
    for tree in trees:
        flat.update(traverse_util.flatten_dict(tree))
    return traverse_util.unflatten_dict(flat)


def trainable_mask(config, params) -> dict:
    """Boolean tree like `params` (True: trained)."""
    predicate = trainable_predicate(config)
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: predicate(k) for k in flat})


# ----------------------------------------------------------------------------------------------
# Optimiser
# ----------------------------------------------------------------------------------------------


def learning_rate_schedule(optim_config) -> optax.Schedule:
    warmup = int(optim_config.warmup_steps)
    rate = optim_config.learning_rate
    if warmup <= 0:
        return optax.constant_schedule(rate)
    return optax.join_schedules([optax.linear_schedule(0.0, rate, warmup),
                                 optax.constant_schedule(rate)], [warmup])


def make_optimizer(config) -> optax.GradientTransformation:
    """Clipping + AdamW over the trainable parameters (the only ones it ever sees)."""
    o = config.optim
    adamw = optax.adamw(learning_rate_schedule(o), b1=o.b1, b2=o.b2, eps=o.get("eps", 1e-8),
                        weight_decay=o.weight_decay)
    if o.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw)
    return adamw


def init_state(config, model, tx, rng) -> TrainState:
    """Fresh state with boxed parameters (so `init_sharded` reads their logical axes); the
    optimiser state is built from the boxed trainable parameters and inherits their axes."""
    init_rng, root = jax.random.split(rng)
    params = init_variables(config, model, init_rng)
    if config.optim.get("trainable") == "lora":
        params[lora.KEY] = lora.init_adapters(params, config.optim.lora,
                                              jax.random.fold_in(init_rng, 1))
    trainable, _ = split_params(params, trainable_predicate(config))
    if not trainable:
        raise ValueError(f"optim.trainable={config.optim.trainable!r} selects no parameter")
    return TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(trainable),
                      rng=root, skipped_steps=jnp.array(0, jnp.int32))


# ----------------------------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Schedule:
    kind: str
    table: np.ndarray    # cogvideox: ᾱ_t float32 [T]; wan: shifted training sigmas float32 [T]
    num_train_timesteps: int

    def noise(self, key, x0):
        """(x_t, target, model timestep) for one sample `x0` [F, H, W, C] float32."""
        k_eps, k_t = jax.random.split(key)
        eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
        idx = jax.random.randint(k_t, (), 0, self.num_train_timesteps)
        value = jnp.asarray(self.table)[idx]
        if self.kind == "v_prediction":
            a, b = jnp.sqrt(value), jnp.sqrt(1.0 - value)
            return a * x0 + b * eps, a * eps - b * x0, idx.astype(jnp.int32)
        sigma = value
        return ((1.0 - sigma) * x0 + sigma * eps, eps - x0,
                sigma * jnp.float32(self.num_train_timesteps))


def make_schedule(config) -> Schedule:
    s = config.schedule
    if s.kind == "v_prediction":
        cfg = S.CogVideoXScheduleConfig(num_train_timesteps=s.num_train_timesteps,
                                        beta_start=s.beta_start, beta_end=s.beta_end,
                                        snr_shift_scale=s.snr_shift_scale,
                                        rescale_betas_zero_snr=s.rescale_betas_zero_snr)
        table = S.cogvideox_alphas_cumprod(cfg).astype(np.float32)
    elif s.kind == "flow_matching":
        table = S.flow_train_sigmas(s.num_train_timesteps, s.shift)
    else:
        raise ValueError(f"unknown schedule.kind {s.kind!r}: v_prediction or flow_matching")
    fam = registry.of(config)
    if s.kind != fam.TRAINING_TARGET:
        raise ValueError(f"the {fam.NAME} family trains with {fam.TRAINING_TARGET}, "
                         f"not {s.kind}")
    return Schedule(s.kind, table, int(s.num_train_timesteps))


# ----------------------------------------------------------------------------------------------
# The train step
# ----------------------------------------------------------------------------------------------


def _sample_keys(step_key, sample_index):
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(sample_index)


def make_draw(schedule: Schedule):
    """`draw(step_key, sample_index [b], x0 [b, ...], p_motion, p_text, logvar=None)` →
    (x_t, target, timesteps, drop_motion [b] bool, drop_text [b] bool), each sample from its own
    key `fold_in(step_key, sample_index)`. With `logvar` (like `x0`) `x0` is the posterior mean
    and the clean sample is x0 + exp(logvar/2)·ε_post.

    Drawn with the classic (non-partitionable) threefry: the values are the same on every mesh
    either way, and XLA:CPU takes ~45 s to compile the partitionable one for a 25k-element
    normal draw (LLVM on the unrolled counter hash) against ~1 s for this one.
    """
    def draw(step_key, sample_index, x0, p_motion: float, p_text: float, logvar=None):
        with jax.threefry_partitionable(False):
            keys = _sample_keys(step_key, sample_index)
            split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
            if logvar is not None:
                post = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(
                    split[:, 3])
                x0 = x0 + jnp.exp(0.5 * logvar.astype(jnp.float32)) * post
            x_t, target, timesteps = jax.vmap(schedule.noise)(split[:, 0], x0)
            drop_motion = jax.vmap(lambda k: jax.random.bernoulli(k, p_motion))(split[:, 1])
            drop_text = jax.vmap(lambda k: jax.random.bernoulli(k, p_text))(split[:, 2])
        return x_t, target, timesteps, drop_motion, drop_text

    return draw


def needs_joints(config) -> bool:
    """Whether the model takes the clips' first-frame joints (`motion_pe="dynamic"`)."""
    return config.model.get("motion_pe", "4d") == "dynamic"


def joints_of(micro) -> jnp.ndarray:
    """`[b, 24, 3]` first-frame joints (mm) of a micro-batch: `first_joints`, else motion[:, 0]."""
    if "first_joints" in micro:
        return micro["first_joints"]
    if "motion" in micro:
        return micro["motion"][:, 0]
    raise ValueError('model.motion_pe="dynamic" needs the clips\' first-frame joints: the batch '
                     "has neither first_joints nor motion")


def make_loss_fn(config, model, tokenizer: FrozenTokenizer | None = None,
                 dropout: bool = True):
    """`loss_fn(params, micro, key, frozen) -> (loss, aux)` for one micro-batch `[b, ...]`."""
    fam = registry.of(config)
    schedule = make_schedule(config)
    draw = make_draw(schedule)
    t = config.train
    p_motion = float(t.motion_drop_prob) if dropout else 0.0
    p_text = float(t.text_drop_prob) if dropout and fam.HAS_TEXT else 0.0
    isa = uses_isa(config)
    dynamic = needs_joints(config) and not isa
    lora_scale = lora.scale(config.optim.lora) if config.optim.get("trainable") == "lora" else 0
    if p_motion > 0:
        fam.check_motion_drop(config)

    def tokens_of(micro, frozen):
        if "motion_tokens" in micro:
            return micro["motion_tokens"]
        if tokenizer is None:
            raise ValueError("the batch has no motion_tokens and no 4DMoT is configured "
                             "(motion.tokenizer_checkpoint)")
        return tokenizer(frozen, micro["motion"])

    def loss_fn(params, micro, key, frozen):
        params = lora.effective_params(params, lora_scale)
        x0 = micro["latents"].astype(jnp.float32)
        b, f = x0.shape[:2]
        x_t, target, timesteps, drop_motion, drop_text = draw(
            key, micro["sample_index"], x0, p_motion, p_text, micro.get("latents_logvar"))
        if isa:
            if "motion" not in micro:
                raise ValueError('model.conditioning="isa" needs the windows\' joints: the '
                                 "batch has no motion")
            tokens, joints = None, {"motion_mm": micro["motion"]}
        else:
            tokens = tokens_of(micro, frozen)
            if tokens.shape[1] != f * NUM_JOINTS:
                raise ValueError(f"{tokens.shape[1]} motion tokens for {f} latent frames; "
                                 f"expected {f * NUM_JOINTS} (frames·24)")
            joints = {"motion_joints": joints_of(micro)} if dynamic else {}
        pred = fam.predict(model, params, x_t, timesteps, micro, tokens,
                           drop_motion if p_motion > 0 else None, drop_text, joints, config)
        err = jnp.square(pred.astype(jnp.float32) - target)
        per_sample = err.reshape(b, -1).mean(axis=1)
        aux = {"motion_dropped": drop_motion.mean(), "text_dropped": drop_text.mean()}
        return per_sample.mean(), aux

    return loss_fn


def make_train_step(config, model, tx, tokenizer: FrozenTokenizer | None = None):
    """`train_step(state, batch, frozen) -> (state, metrics)`; see the module docstring."""
    predicate = trainable_predicate(config)
    loss_fn = make_loss_fn(config, model, tokenizer)
    schedule = learning_rate_schedule(config.optim)

    def train_step(state: TrainState, batch: dict, frozen=None):
        key = jax.random.fold_in(state.rng, state.step)
        trainable, fixed = split_params(state.params, predicate)

        def micro_loss(train_params, micro):
            return loss_fn(merge_params(fixed, train_params), micro, key, frozen)

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
        k = batch["latents"].shape[0]
        if k == 1:
            (loss, aux), grads = grad_fn(trainable, jax.tree.map(lambda x: x[0], batch))
        else:
            def body(carry, micro):
                (l, a), g = grad_fn(trainable, micro)
                loss_sum, grad_sum = carry
                return (loss_sum + l, jax.tree.map(jnp.add, grad_sum, g)), a

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
            (loss, grads), auxs = jax.lax.scan(body, (jnp.float32(0), zeros), batch)
            loss = loss / k
            grads = jax.tree.map(lambda g: g / k, grads)
            aux = jax.tree.map(jnp.mean, auxs)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_trainable = jax.tree.map(keep, new_trainable, trainable)
        opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        skipped = state.skipped_steps + (~finite).astype(jnp.int32)
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "lr": schedule(state.step - state.skipped_steps),
                   "nonfinite": (~finite).astype(jnp.int32), "skipped_steps": skipped, **aux}
        new_state = state.replace(step=state.step + 1, params=merge_params(fixed, new_trainable),
                                  opt_state=opt_state, skipped_steps=skipped)
        return new_state, metrics

    return train_step


def make_eval_step(config, model, tokenizer: FrozenTokenizer | None = None):
    """`eval_step(params, batch, key, frozen) -> loss` on one micro-batch layout `[1, b, ...]`,
    without condition dropout (a fixed key gives a fixed noise/timestep draw)."""
    loss_fn = make_loss_fn(config, model, tokenizer, dropout=False)

    def eval_step(params, batch, key, frozen=None):
        return loss_fn(params, jax.tree.map(lambda x: x[0], batch), key, frozen)[0]

    return eval_step


def abstract_batch(config, batch_size: int, frames: int, height: int, width: int,
                   channels: int = 16, text_rows: int = 0, accum: int = 1,
                   tokens: bool = True, image_tokens: int = 0, logvar: bool = False) -> dict:
    """ShapeDtypeStructs of a global batch (layout `[k, b, ...]`), for lowering without data;
    `logvar` adds `latents_logvar` (records holding the VAE posterior)."""
    k, b = accum, batch_size // accum
    f32 = jnp.float32
    out = {"latents": jax.ShapeDtypeStruct((k, b, frames, height, width, channels), f32),
           "ref_latents": jax.ShapeDtypeStruct((k, b, 1, height, width, channels), f32),
           "sample_index": jax.ShapeDtypeStruct((k, b), jnp.int32)}
    if logvar:
        out["latents_logvar"] = out["latents"]
    if tokens and not uses_isa(config):
        out["motion_tokens"] = jax.ShapeDtypeStruct((k, b, frames * NUM_JOINTS,
                                                     motion_width(config)), f32)
    else:
        out["motion"] = jax.ShapeDtypeStruct((k, b, 4 * (frames - 1) + 1, NUM_JOINTS, 3), f32)
    if needs_joints(config):
        out["first_joints"] = jax.ShapeDtypeStruct((k, b, NUM_JOINTS, 3), f32)
    fam = registry.of(config)
    if fam.HAS_TEXT and text_rows:
        out["text"] = jax.ShapeDtypeStruct((k, b, text_rows, config.model.text_dim), f32)
        out["text_lens"] = jax.ShapeDtypeStruct((k, b), jnp.int32)
    if fam.HAS_IMAGE and image_tokens:
        out["image"] = jax.ShapeDtypeStruct((k, b, image_tokens, config.model.image_dim), f32)
    return out

