"""The 4DMoT trainer: data, sharded state, jitted steps and evaluation for `train.loop`.

`train(config, workdir)` trains until `config.train.num_steps`. With `config.resume` (default)
a rerun of the same command continues from the last complete checkpoint, restoring parameters,
optimiser and quantizer state, the RNG and the data iterator, so the loss sequence is the one an
uninterrupted run gives. SIGTERM (preemption) saves a checkpoint before exiting.
"""
from __future__ import annotations

import functools
import sys

import jax
import numpy as np

from mtvjax.checkpoint.manager import abstract_like, stored_arrays
from mtvjax.data.loader import make_batches, make_iterator, make_source
from mtvjax.data.stats import compute_stats, load_stats
from mtvjax.evaluate.metrics import active_code_fraction, perplexity
from mtvjax.models.fourdmot import quantizer as vq
from mtvjax.models.fourdmot.build import build_model
from mtvjax.parallel.mesh import make_mesh
from mtvjax.parallel.sharding import named_sharding, replicated
from mtvjax.train import fourdmot_step as steps
from mtvjax.train import loop

STATS_SAMPLE_CLIPS = 256


def normalization_stats(config, source) -> dict:
    """Statistics from the configured `.npy` files, else from (up to 256 clips of) the data."""
    norm = config.normalization
    if norm.mean_path or norm.std_path:
        return load_stats(norm.mean_path, norm.std_path)
    count = min(len(source), STATS_SAMPLE_CLIPS)
    return compute_stats(source[i].motion for i in range(count))


class FourDMoTTrainer:
    """Holds what a run compiles once: model, optimiser, mesh, jitted steps."""

    def __init__(self, config, devices=None):
        self.config = config
        self.model = build_model(config.model)
        self.tx = steps.make_optimizer(config)
        self.mesh = make_mesh(dict(config.mesh), devices)
        self.replicated = replicated(self.mesh)
        self.batch_sharding = named_sharding(self.mesh, ("batch", None, None, None),
                                             config.sharding_rules)
        self.sample_sharding = named_sharding(self.mesh, ("batch",), config.sharding_rules)
        self.train_step = jax.jit(
            steps.make_train_step(config, self.model, self.tx),
            in_shardings=(self.replicated, self._batch_shardings(), self.replicated),
            out_shardings=(self.replicated, self.replicated), donate_argnums=0)
        self.eval_step = jax.jit(steps.make_eval_step(config, self.model),
                                 in_shardings=(self.replicated, self._batch_shardings()),
                                 out_shardings=self.replicated)

    def _batch_shardings(self):
        return {"motion": self.batch_sharding, "skipped": self.sample_sharding}

    def init_state(self, stats: dict) -> steps.TrainState:
        """Shape-first initialisation: the state is created directly with its sharding."""
        init = functools.partial(steps.init_state, self.config, self.model, self.tx, stats)
        return jax.jit(init, out_shardings=self.replicated)(jax.random.PRNGKey(self.config.seed))

    def abstract_state(self, saved_quantizer=None) -> steps.TrainState:
        """The state to restore into; `saved_quantizer` (the quantizer entries of the checkpoint
        to restore) leaves out an entry an older checkpoint lacks (see `vq.as_saved`)."""
        abstract = abstract_like(steps.abstract_state(self.config, self.model, self.tx),
                                 self.replicated)
        if saved_quantizer is None:
            return abstract
        return abstract.replace(quantizer=vq.as_saved(abstract.quantizer, saved_quantizer))

    def completed(self, state: steps.TrainState) -> steps.TrainState:
        """A state restored from an older checkpoint, with the entries it lacked (empty)."""
        return state.replace(quantizer=jax.device_put(vq.with_ever_used(state.quantizer),
                                                      self.replicated))

    def device_batch(self, batch: dict) -> dict:
        """Host batch (this process's share) → global arrays sharded over the mesh."""
        local = {"motion": batch["motion"],
                 "skipped": np.zeros(batch["motion"].shape[0], np.int32)}
        local["skipped"][: int(batch["skipped"])] = 1
        shardings = self._batch_shardings()
        return {k: jax.make_array_from_process_local_data(shardings[k], v)
                for k, v in local.items()}

    def batches(self, source, seed: int, augment: bool):
        d = self.config.data
        return make_batches(source, d.batch_size, d.frame_counts, d.strides, seed,
                            d.scale_aug if augment else 0.0, d.shift_aug if augment else 0.0,
                            jax.process_index(), jax.process_count())

    def evaluate(self, state, source, num_batches: int) -> dict:
        """Mean reconstruction metrics and code usage over a fixed, unaugmented pass, and the
        shares of codes alive by EMA count (`live_codes`) and in the `ever_used` mask."""
        batches = self.batches(source, self.config.seed + 1, augment=False)
        totals, histogram = {}, 0
        for i in range(num_batches):
            out = jax.device_get(self.eval_step(state, self.device_batch(batches[i])))
            histogram = histogram + out.pop("code_histogram")
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v) / num_batches
        totals["active_codes"] = float(active_code_fraction(histogram))
        totals["perplexity"] = float(perplexity(histogram))
        quantizer = jax.device_get(state.quantizer)
        totals["live_codes"] = float(np.mean(quantizer["ema_count"]
                                             >= self.config.quantizer.dead_threshold))
        totals["ever_used_codes"] = float(np.mean(quantizer["ever_used"]))
        return totals


def saved_quantizer_entries(checkpointer, step: int) -> set[str] | None:
    """The quantizer entries saved at `step` (None: unreadable, `restore_latest` falls back)."""
    try:
        return set(stored_arrays(checkpointer.directory, step, "quantizer"))
    except Exception:  # noqa: BLE001 - missing or truncated metadata, whatever Orbax raises
        return None


def train(config, workdir: str) -> tuple[steps.TrainState, dict]:
    """Runs (or resumes) training; returns the final state and the final evaluation metrics."""
    d, t = config.data, config.train
    if d.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size={d.batch_size} must divide by {jax.process_count()} processes")
    trainer = FourDMoTTrainer(config)             # refuses bad quantizer settings: before any write
    checkpointer, latest = loop.open_checkpointer(config, workdir)
    source, load_errors = make_source(d, min(d.frame_counts))
    for error in load_errors:
        print(f"skipping bad clip: {error}", file=sys.stderr)
    data_iter = make_iterator(trainer.batches(source, d.shuffle_seed, augment=True),
                              d.num_threads, d.prefetch)
    state = loop.restore_or_init(config, checkpointer, latest, workdir,
                                 lambda: trainer.abstract_state(
                                     saved_quantizer_entries(checkpointer, latest)),
                                 lambda: trainer.init_state(normalization_stats(config, source)),
                                 data_iter)
    state = trainer.completed(state)
    window_histogram = [0]        # code usage summed since the last log line

    def train_step(state, batch, step):
        state, metrics = trainer.train_step(state, batch, jax.random.fold_in(state.rng, step))
        window_histogram[0] = window_histogram[0] + metrics["code_histogram"]
        return state, metrics

    def log_scalars(state, metrics, step_time):
        scalars = {k: v for k, v in jax.device_get(metrics).items() if k != "code_histogram"}
        scalars.update(active_codes=float(active_code_fraction(window_histogram[0])),
                       step_time=step_time, samples_per_s=d.batch_size / step_time,
                       skipped=int(state.skipped_samples) + len(load_errors))
        window_histogram[0] = 0
        return scalars

    def evaluate(state):
        if not t.eval_batches:             # 0: no final evaluation (as the MV-DiT trainer)
            return {}
        eval_source = source
        if d.val_path:
            val_config = d.copy_and_resolve_references()
            val_config.path = d.val_path
            eval_source = make_source(val_config, min(d.frame_counts))[0]
        return trainer.evaluate(state, eval_source, t.eval_batches)

    hooks = loop.TrainHooks(device_batch=trainer.device_batch, train_step=train_step,
                            log_scalars=log_scalars, evaluate=evaluate)
    return loop.run(config, workdir, checkpointer, state, data_iter, hooks)
