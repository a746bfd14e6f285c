"""The MV-DiT trainer: latent data, sharded state, jitted step and evaluation for `train.loop`.

`train(config, workdir)` trains a `configs/mvdit.py` variant until `train.num_steps`:

* data: `data.source="shards"` reads a latent dataset built by `python -m data_pipeline.latents`
  (`mtvjax.data.latent_records`); `"synthetic"` makes the same items in memory from procedural
  motion. Each process loads its block of every global batch; the Grain iterator state is saved
  with every checkpoint.
* motion tokens: precomputed in the records, or made inside the step by a frozen 4DMoT restored
  from `motion.tokenizer_checkpoint` (its code width must equal the model's motion width). With
  `model.motion_pe="dynamic"` the records' `first_joints` go to the step as well. With
  `model.conditioning="isa"` the records' `motion` windows go to the step instead of any tokens
  (`motion.tokens` is ignored; no 4DMoT is loaded).
* image features: a family with a CLIP-image branch (the 17B) refuses data whose records have no
  `image` before anything compiles (the branch is never skipped); the synthetic source gives
  seeded stand-in features (`data.synthetic_image_rows` rows).
* posterior: records with `latents_logvar` are sampled from the VAE posterior in the step.
* state: parameters and optimiser state are created sharded from their logical axis names
  (`init_sharded` with `config.mesh` / `config.sharding_rules`); the batch is sharded on `batch`,
  and the step traces under `activation_sharding`, so a `context` mesh axis splits the video
  tokens (`mtvjax.parallel.context_attention`). The same code runs on one device, one host or
  many hosts. `train.init_from` loads pretrained (e.g. converted) parameters; parameters it
  lacks (new unconditional tokens) keep their init.
* checkpoints: async Orbax (state, data iterator, config) every `train.checkpoint_every` steps, at
  the end, after `train.stop_after_steps` steps of this run, and on SIGTERM before exiting
  (status 143). Rerunning resumes exactly (same losses as an uninterrupted run). With
  `optim.trainable="lora"` the adapters alone are also written at every checkpoint to
  `WORKDIR/lora_adapters.safetensors` (replaced each time; its metadata names the step, rank,
  alpha and targets); `mtvjax export` merges them into a converted checkpoint.
* metrics (stdout, TensorBoard, metrics.jsonl): loss, grad norm, lr, step time, samples/s, MFU
  (FLOPs per device from XLA's cost analysis of the compiled step / step time / peak FLOP/s per
  device, `train.peak_flops_per_device`, measured with an f32 matmul when 0), skipped steps.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils
import numpy as np
from flax import traverse_util

from mtvjax.checkpoint.manager import Checkpointer
from mtvjax.data.latent_batches import make_latent_batches
from mtvjax.data.latent_shard_source import LatentShardSource
from mtvjax.data.synthetic_latents import SyntheticLatentSource
from mtvjax.data.loader import make_iterator
from mtvjax.models.fourdmot.tokenizer import restore_tokenizer
from mtvjax.models.mvdit import registry
from mtvjax.parallel.mesh import make_mesh
from mtvjax.parallel.context_attention import check_heads
from mtvjax.parallel.sharding import (abstract_sharded, activation_sharding, init_sharded,
                                      named_sharding, replicated)
from mtvjax.train import mvdit_step as steps
from mtvjax.train import loop, lora

NUM_JOINTS = 24


def matmul_peak_flops(n: int = 1024, repeats: int = 3) -> float:
    """Achieved f32 FLOP/s of an n×n×n matmul on the first device (a practical peak)."""
    a = jax.device_put(jnp.ones((n, n), jnp.float32), jax.devices()[0])
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times))


def make_source(config, split: str | None = None, path: str | None = None):
    d = config.data
    if d.source == "synthetic":
        text_dim = config.model.text_dim if registry.of(config).HAS_TEXT else 0
        image_dim = config.model.image_dim if registry.of(config).HAS_IMAGE else 0
        if d.synthetic_tokens not in ("projection", "none"):
            raise ValueError(f"data.synthetic_tokens must be projection or none, got "
                             f"{d.synthetic_tokens!r}")
        width = steps.motion_width(config) if d.synthetic_tokens == "projection" else 0
        return SyntheticLatentSource(d.synthetic_windows, d.synthetic_frames,
                                     tuple(d.synthetic_latent_size), config.model.out_channels,
                                     d.synthetic_text_rows, text_dim,
                                     d.shuffle_seed if split is None else d.shuffle_seed + 1,
                                     width, d.synthetic_image_rows, image_dim)
    if d.source == "shards":
        if not (path or d.path):
            raise ValueError("data.source='shards' needs --config.data.path (a folder built by "
                             "`python -m data_pipeline.latents`)")
        return LatentShardSource(path or d.path, split or d.split)
    raise ValueError(f"unknown data.source {d.source!r}: use synthetic or shards")


def check_image(config, sample: dict, dataset: str) -> None:
    """Refuses data without CLIP-image features (`sample` is one item of `dataset`) for a model
    with an image branch: training never skips the branch."""
    fam = registry.of(config)
    if fam.HAS_IMAGE and sample.get("image") is None:
        raise ValueError(f"{dataset}: the records have no `image` (CLIP-image features), which "
                         f"the {fam.NAME} model's image branch needs; build them with image "
                         "features")


def fit_config(config, sample: dict) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The effective training config for data like `sample` (one item), and what changed.

    With `train.fit_uncond_motion` and motion dropout on, the model gets unconditional motion
    tokens of the data's shape [F·24, width] (the tiny 7B keeps the reference's unusable
    (312, 3072); the released 17B has none). A 7B without joint positions takes the dataset's
    mean joints for its motion RoPE when the shards carry them.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    notes = []
    m, t = config.model, config.train
    count = sample["latents"].shape[0] * NUM_JOINTS
    width = steps.motion_width(config)
    if t.motion_drop_prob > 0 and t.fit_uncond_motion and not steps.uses_isa(config):
        notes += registry.of(config).fit_uncond_motion(m, count, width)
    if registry.of(config).wants_dataset_joints(m) and config.data.source == "shards":
        source = LatentShardSource(config.data.path, config.data.split)
        mean = source.root / "mean.npy"
        if mean.is_file():
            m.joint_positions_path = str(mean)
            notes.append(f"model.joint_positions_path={mean} (the dataset-mean joints of the "
                         "motion RoPE)")
    return config, notes


class MVDiTTrainer:
    """What a run builds once: model, optimiser, mesh, frozen 4DMoT, compiled steps."""

    def __init__(self, config, devices=None, has_tokens: bool = True):
        self.config = config
        self.model = steps.build_model(config)
        self.tx = steps.make_optimizer(config)
        self.mesh = make_mesh(dict(config.mesh), devices)
        self.rules = tuple(tuple(r) for r in config.sharding_rules)
        check_heads(config.model.num_heads, dict(self.mesh.shape), self.rules)
        self.replicated = replicated(self.mesh)
        self.accum = int(config.optim.grad_accum_steps)
        self.tokenizer, self.frozen = None, None
        mode = config.motion.tokens
        if mode not in ("auto", "records", "tokenizer"):
            raise ValueError(f"motion.tokens must be auto, records or tokenizer, got {mode!r}")
        if mode == "records" and not has_tokens and not steps.uses_isa(config):
            raise ValueError("motion.tokens='records' but the records hold no motion_tokens")
        self.isa = steps.uses_isa(config)    # raw motion windows, never tokens
        self.use_tokenizer = not self.isa and (mode == "tokenizer"
                                               or (mode == "auto" and not has_tokens))
        if self.use_tokenizer:
            if not config.motion.tokenizer_checkpoint:
                raise ValueError("the records hold no motion tokens: set "
                                 "motion.tokenizer_checkpoint to a 4DMoT checkpoint folder")
            self.tokenizer, frozen, code_dim, _ = restore_tokenizer(
                config.motion.tokenizer_checkpoint, config.motion.tokenizer_step)
            if code_dim != steps.motion_width(config):
                raise ValueError(f"the 4DMoT makes {code_dim}-wide tokens, the model takes "
                                 f"{steps.motion_width(config)}-wide ones")
            self.frozen = jax.device_put(frozen, self.replicated)
        self._init = functools.partial(steps.init_state, config, self.model, self.tx)
        self._step_fn = steps.make_train_step(config, self.model, self.tx, self.tokenizer)
        self._eval_fn = jax.jit(steps.make_eval_step(config, self.model, self.tokenizer))
        self._compiled = {}
        self.flops_per_step = None
        self.state_shardings = None

    # ------------------------------------------------------------------------------------------

    def init_state(self) -> steps.TrainState:
        state, self.state_shardings = init_sharded(self._init, self.mesh, self.rules,
                                                   jax.random.PRNGKey(self.config.seed))
        return state

    def abstract_state(self) -> steps.TrainState:
        abstract = abstract_sharded(self._init, self.mesh, self.rules,
                                    jax.random.PRNGKey(self.config.seed))
        self.state_shardings = jax.tree.map(lambda x: x.sharding, abstract)
        return abstract

    def batch_sharding(self, ndim: int):
        return named_sharding(self.mesh, (None, "batch") + (None,) * (ndim - 2), self.rules)

    def device_batch(self, local: dict) -> dict:
        """This process's block `[n, ...]` → global `[k, B/k, ...]` arrays; sample i of the
        block goes to micro-batch i % k, and `sample_index` holds its global position."""
        k, p = self.accum, jax.process_index()
        n = len(local["latents"])
        if n % k:
            raise ValueError(f"{n} local samples do not divide into {k} micro-batches")
        out = {}
        for name, arr in local.items():
            if name in ("index",) or (name == "motion_tokens"
                                      and (self.use_tokenizer or self.isa)):
                continue
            if name == "first_joints" and (self.isa or not steps.needs_joints(self.config)):
                continue
            if name == "motion" and not (self.use_tokenizer or self.isa):
                continue
            arr = np.ascontiguousarray(np.asarray(arr).reshape((n // k, k) + arr.shape[1:])
                                       .swapaxes(0, 1))
            out[name] = jax.make_array_from_process_local_data(self.batch_sharding(arr.ndim), arr)
        index = (p * n + np.arange(n, dtype=np.int32)).reshape(n // k, k).T.copy()
        out["sample_index"] = jax.make_array_from_process_local_data(self.batch_sharding(2), index)
        return out

    def compiled(self, state, batch):
        """The train step compiled for this batch signature (cost analysis kept for MFU)."""
        signature = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if signature not in self._compiled:
            if self.state_shardings is None:
                self.abstract_state()
            jitted = jax.jit(self._step_fn, out_shardings=(self.state_shardings, self.replicated),
                             donate_argnums=0)
            with activation_sharding(self.mesh, self.rules):   # video tokens over `context`
                compiled = jitted.lower(state, batch, self.frozen).compile()
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            self.flops_per_step = float((cost or {}).get("flops", float("nan")))
            self._compiled[signature] = compiled
        return self._compiled[signature]

    def step(self, state, batch):
        return self.compiled(state, batch)(state, batch, self.frozen)

    def evaluate(self, params, batches, num_batches: int, seed: int) -> dict:
        losses = []
        for i in range(num_batches):
            local = batches[i]
            saved, self.accum = self.accum, 1
            try:
                batch = self.device_batch(local)
            finally:
                self.accum = saved
            key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
            with activation_sharding(self.mesh, self.rules):
                losses.append(float(self._eval_fn(params, batch, key, self.frozen)))
        return {"loss": float(np.mean(losses))}


def load_pretrained(state: steps.TrainState, directory: str) -> tuple[steps.TrainState, list]:
    """`state` with the parameters of a params checkpoint (`{"params": ...}`, as the convert
    command writes) restored into its shardings; returns the parameter paths kept from init."""
    import orbax.checkpoint as ocp
    checkpointer = Checkpointer(directory, keep=None, create=False)
    step = checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(f"{directory}: no checkpoint to initialise from")
    manager = checkpointer._manager
    stored = manager.item_metadata(step)["state"]["params"]
    stored = traverse_util.flatten_dict(stored, is_leaf=lambda p, x: not isinstance(x, dict))
    current = traverse_util.flatten_dict(state.params)
    extra = sorted("/".join(k) for k in stored if k not in current)
    if extra:
        raise ValueError(f"{directory}: parameters the model lacks: {extra[:5]}")
    target = {}
    for k, meta in stored.items():
        if tuple(meta.shape) != current[k].shape:
            raise ValueError(f"{directory}: {'/'.join(k)} is {tuple(meta.shape)}, the model's "
                             f"{current[k].shape}")
        target[k] = jax.ShapeDtypeStruct(current[k].shape, current[k].dtype,
                                         sharding=current[k].sharding)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
        {"params": traverse_util.unflatten_dict(target)})))["state"]["params"]
    checkpointer.close()
    flat = dict(current)
    flat.update(traverse_util.flatten_dict(restored))
    kept = sorted("/".join(k) for k in current if k not in stored and k[0] != lora.KEY)
    return state.replace(params=traverse_util.unflatten_dict(flat)), kept


def train(config, workdir: str) -> tuple[steps.TrainState, dict]:
    """Runs (or resumes) MV-DiT training; returns the final state and the final evaluation."""
    d, t = config.data, config.train
    if d.batch_size % (jax.process_count() * config.optim.grad_accum_steps):
        raise ValueError(f"data.batch_size={d.batch_size} must divide by processes × "
                         f"grad_accum_steps ({jax.process_count()} × "
                         f"{config.optim.grad_accum_steps})")
    checkpointer, latest = loop.open_checkpointer(config, workdir)
    source = make_source(config)
    sample = source[0]
    dataset = d.path if d.source == "shards" else "data.source=synthetic"
    check_image(config, sample, dataset)
    if t.eval_batches and d.val_path:           # the held-out data too, before anything runs
        check_image(config, make_source(config, "val", d.val_path)[0], d.val_path)
    config, notes = fit_config(config, sample)
    for note in notes:
        print(f"config: {note}", flush=True)
    trainer = MVDiTTrainer(config, has_tokens=sample["motion_tokens"] is not None)
    batches = make_latent_batches(source, d.batch_size, d.shuffle_seed, jax.process_index(),
                                  jax.process_count(), d.text_rows)
    data_iter = make_iterator(batches, d.num_threads, d.prefetch)

    def init_state():
        state = trainer.init_state()
        if t.init_from:
            state, kept = load_pretrained(state, t.init_from)
            print(f"initialised from {t.init_from}" + (f"; kept fresh: {', '.join(kept)}"
                                                        if kept else ""), flush=True)
        return state

    state = loop.restore_or_init(config, checkpointer, latest, workdir, trainer.abstract_state,
                                 init_state, data_iter)

    peak = float(t.peak_flops_per_device) or matmul_peak_flops()

    def log_scalars(state, metrics, step_time):
        scalars = jax.device_get(metrics)
        scalars.update(step_time=step_time, samples_per_s=d.batch_size / step_time,
                       mfu=trainer.flops_per_step / step_time / peak)
        return scalars

    def evaluate(state):
        if not t.eval_batches:
            return {}
        eval_source = make_source(config, "val", d.val_path) if d.val_path else source
        eval_batches = make_latent_batches(eval_source, d.batch_size, d.shuffle_seed + 1,
                                           jax.process_index(), jax.process_count(), d.text_rows)
        return trainer.evaluate(state.params, eval_batches, t.eval_batches, config.seed + 1)

    def save_adapters(state, step):
        adapters = multihost_utils.process_allgather(state.params[lora.KEY], tiled=True)
        if jax.process_index() == 0:
            o = config.optim.lora
            lora.save_adapters(f"{workdir}/{lora.FILE_NAME}", adapters,
                               {"step": step, "rank": o.rank, "alpha": o.alpha,
                                "targets": list(o.targets), "family": registry.of(config).NAME})

    hooks = loop.TrainHooks(device_batch=trainer.device_batch,
                            train_step=lambda state, batch, step: trainer.step(state, batch),
                            log_scalars=log_scalars, evaluate=evaluate,
                            warm_up=trainer.compiled,  # compile outside the timed window
                            checkpointed=save_adapters if lora.KEY in state.params else None)
    return loop.run(config, workdir, checkpointer, state, data_iter, hooks)
