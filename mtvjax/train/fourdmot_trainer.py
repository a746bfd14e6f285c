"""The 4DMoT training loop: data, sharded state, jitted steps, logging, checkpoints, resume.

`train(config, workdir)` trains until `config.train.num_steps`. With `config.resume` (default)
a rerun of the same command continues from the last complete checkpoint, restoring parameters,
optimiser and quantizer state, the RNG and the data iterator, so the loss sequence is the one an
uninterrupted run gives. SIGTERM (preemption) saves a checkpoint before exiting.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mtvjax.checkpoint.manager import Checkpointer, abstract_like, config_to_json
from mtvjax.data.loader import make_batches, make_iterator, make_source
from mtvjax.data.stats import compute_stats, load_stats
from mtvjax.evaluate.metrics import active_code_fraction, perplexity
from mtvjax.parallel.mesh import make_mesh, named_sharding, replicated
from mtvjax.train import fourdmot_step as steps
from mtvjax.train.metric_writer import MetricWriter

STATS_SAMPLE_CLIPS = 256


def normalization_stats(config, source) -> dict:
    """Statistics from the configured `.npy` files, else from (up to 256 clips of) the data."""
    norm = config.normalization
    if norm.mean_path or norm.std_path:
        return load_stats(norm.mean_path, norm.std_path)
    count = min(len(source), STATS_SAMPLE_CLIPS)
    return compute_stats(source[i].motion for i in range(count))


class _Preemption:
    """Turns SIGTERM into a flag the loop checks, so it can checkpoint before exiting."""

    def __init__(self):
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


class FourDMoTTrainer:
    """Holds what a run compiles once: model, optimiser, mesh, jitted steps."""

    def __init__(self, config, devices=None):
        self.config = config
        self.model = steps.build_model(config.model)
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

    def abstract_state(self) -> steps.TrainState:
        return abstract_like(steps.abstract_state(self.config, self.model, self.tx), self.replicated)

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
        """Mean reconstruction metrics and code usage over a fixed, unaugmented pass."""
        batches = self.batches(source, self.config.seed + 1, augment=False)
        totals, histogram = {}, 0
        for i in range(num_batches):
            out = jax.device_get(self.eval_step(state, self.device_batch(batches[i])))
            histogram = histogram + out.pop("code_histogram")
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v) / num_batches
        totals["active_codes"] = float(active_code_fraction(histogram))
        totals["perplexity"] = float(perplexity(histogram))
        return totals


def train(config, workdir: str) -> tuple[steps.TrainState, dict]:
    """Runs (or resumes) training; returns the final state and the final evaluation metrics."""
    d, t = config.data, config.train
    if d.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size={d.batch_size} must divide by {jax.process_count()} processes")
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None and not config.resume:
        raise FileExistsError(f"{workdir} already holds checkpoints (latest step {latest}); rerun "
                              "with --config.resume=True to continue, or use a new workdir")
    trainer = FourDMoTTrainer(config)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    source, load_errors = make_source(d, min(d.frame_counts))
    for error in load_errors:
        print(f"skipping bad clip: {error}", file=sys.stderr)
    data_iter = make_iterator(trainer.batches(source, d.shuffle_seed, augment=True),
                              d.num_threads, d.prefetch)
    if latest is not None:
        state = checkpointer.restore(latest, trainer.abstract_state(), data_iter)
        print(f"resumed from {workdir} at step {latest}", flush=True)
    else:
        state = trainer.init_state(normalization_stats(config, source))

    config_json = config_to_json(config)
    preemption = _Preemption()
    start = int(state.step)
    window_hist, window_start, window_steps = 0, time.perf_counter(), 0
    progress = tqdm(total=t.num_steps, initial=start, disable=not sys.stdout.isatty(), unit="step")
    for step in range(start, t.num_steps):
        batch = trainer.device_batch(next(data_iter))
        state, metrics = trainer.train_step(state, batch, jax.random.fold_in(state.rng, step))
        window_hist = window_hist + metrics["code_histogram"]
        window_steps += 1
        progress.update(1)
        done = step + 1
        if done % t.log_every == 0 or done == t.num_steps:
            scalars = {k: v for k, v in jax.device_get(metrics).items() if k != "code_histogram"}
            elapsed = time.perf_counter() - window_start
            scalars.update(active_codes=float(active_code_fraction(window_hist)),
                           step_time=elapsed / window_steps,
                           samples_per_s=window_steps * d.batch_size / elapsed,
                           skipped=int(state.skipped_samples) + len(load_errors))
            writer.write(done, scalars)
            window_hist, window_start, window_steps = 0, time.perf_counter(), 0
        stop = preemption.requested or done - start == t.stop_after_steps
        if done % t.checkpoint_every == 0 or done == t.num_steps or stop:
            checkpointer.save(done, state, data_iter, config_json, force=stop)
        if stop:
            break
    progress.close()
    checkpointer.wait()
    if int(state.step) < t.num_steps:
        writer.close()
        checkpointer.close()
        reason = "SIGTERM" if preemption.requested else "stop_after_steps"
        print(f"{reason}: checkpointed step {int(state.step)}, stopping", flush=True)
        if preemption.requested:
            sys.exit(143)
        return state, {}

    eval_source = source
    if d.val_path:
        val_config = d.copy_and_resolve_references()
        val_config.path = d.val_path
        eval_source = make_source(val_config, min(d.frame_counts))[0]
    summary = trainer.evaluate(state, eval_source, t.eval_batches)
    writer.write(int(state.step), summary, prefix="eval")
    writer.close()
    checkpointer.close()
    return state, summary

