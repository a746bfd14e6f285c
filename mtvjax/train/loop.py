"""The training loop both trainers share: resume, steps, metrics, checkpoints, preemption, eval.

A trainer supplies its state, data iterator and a `TrainHooks` (how to put a host batch on the
devices, run one step, turn the last step's metrics into a log line, evaluate at the end); the loop
does the rest the same way for every model:

* **resume.** `open_checkpointer` refuses a workdir that holds checkpoints unless
  `config.resume`; `restore_or_init` continues from the latest complete checkpoint (state and data
  iterator), so the loss sequence is the one an uninterrupted run gives.
* **checkpoints.** Every `train.checkpoint_every` steps, at `train.num_steps`, after
  `train.stop_after_steps` steps of this run, and on SIGTERM (preemption), after which the process
  exits with status 143.
* **metrics.** Every `train.log_every` steps and at the last step, with the wall time per step of
  the window since the previous log line; the final evaluation is written with prefix `eval`.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
from tqdm import tqdm

from mtvjax.checkpoint.manager import Checkpointer, config_to_json
from mtvjax.train.metric_writer import MetricWriter

PREEMPTED_EXIT_STATUS = 143


class Preemption:
    """Turns SIGTERM into a flag the loop checks, so it can checkpoint before exiting."""

    def __init__(self):
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


@dataclasses.dataclass
class TrainHooks:
    """What a trainer supplies to the loop.

    `device_batch(host_batch)` → the step's global batch; `train_step(state, batch, step)` →
    (state, metrics); `log_scalars(state, metrics, step_time)` → the scalars of a log line from the
    state and metrics after the last step and the mean seconds per step of the window; `evaluate(state)` → final
    evaluation scalars ({}: none). `warm_up(state, batch)`, when given, runs before the first step
    (e.g. compilation) outside the timed window.
    """
    device_batch: Callable[[Any], Any]
    train_step: Callable[[Any, Any, int], tuple[Any, Any]]
    log_scalars: Callable[[Any, Any, float], dict]
    evaluate: Callable[[Any], dict]
    warm_up: Callable[[Any, Any], None] | None = None


def open_checkpointer(config, workdir: str) -> tuple[Checkpointer, int | None]:
    """The run's checkpointer and its latest step; refuses to overwrite a run without `resume`."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                keep=config.train.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None and not config.resume:
        raise FileExistsError(f"{workdir} already holds checkpoints (latest step {latest}); rerun "
                              "with --config.resume=True to continue, or use a new workdir")
    return checkpointer, latest


def restore_or_init(checkpointer: Checkpointer, latest: int | None, workdir: str,
                    abstract_state: Callable[[], Any], init_state: Callable[[], Any], data_iter):
    """The state of the latest checkpoint (restoring `data_iter` with it), else a fresh one."""
    if latest is None:
        return init_state()
    state = checkpointer.restore(latest, abstract_state(), data_iter)
    print(f"resumed from {workdir} at step {latest}", flush=True)
    return state


def run(config, workdir: str, checkpointer: Checkpointer, state, data_iter,
        hooks: TrainHooks) -> tuple[Any, dict]:
    """Trains from `state.step` to `train.num_steps`; returns the final state and evaluation
    ({} when the run stopped early after `stop_after_steps`; SIGTERM exits the process)."""
    t = config.train
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    config_json = config_to_json(config)
    preemption = Preemption()
    start = int(state.step)
    window_start, window_steps = time.perf_counter(), 0
    progress = tqdm(total=t.num_steps, initial=start, disable=not sys.stdout.isatty(), unit="step")
    for step in range(start, t.num_steps):
        batch = hooks.device_batch(next(data_iter))
        if step == start and hooks.warm_up is not None:
            hooks.warm_up(state, batch)
            window_start = time.perf_counter()
        state, metrics = hooks.train_step(state, batch, step)
        window_steps += 1
        progress.update(1)
        done = step + 1
        if done % t.log_every == 0 or done == t.num_steps:
            step_time = (time.perf_counter() - window_start) / window_steps
            writer.write(done, hooks.log_scalars(state, metrics, step_time))
            window_start, window_steps = time.perf_counter(), 0
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
            sys.exit(PREEMPTED_EXIT_STATUS)
        return state, {}

    summary = hooks.evaluate(state)
    if summary:
        writer.write(int(state.step), summary, prefix="eval")
    writer.close()
    checkpointer.close()
    return state, summary
