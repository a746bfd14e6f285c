"""The training loop both trainers share: resume, steps, metrics, checkpoints, preemption, eval.

A trainer supplies its state, data iterator and a `TrainHooks` (how to put a host batch on the
devices, run one step, turn the last step's metrics into a log line, evaluate at the end); the loop
does the rest the same way for every model:

* **resume.** `open_checkpointer` refuses a workdir that holds checkpoints unless
  `config.resume`; `restore_or_init` checks the config against the checkpoint's
  (`resume_guard`) and continues from the newest intact checkpoint (state and data iterator; a
  broken newer step is set aside with a warning), so the loss sequence is the one an
  uninterrupted run gives.
* **checkpoints.** Every `train.checkpoint_every` steps, at `train.num_steps`, after
  `train.stop_after_steps` steps of this run, and on SIGTERM (preemption), after which the process
  exits with status 143.
* **metrics.** Every `train.log_every` steps and at the last step, with the wall time per step of
  the window since the previous log line; the final evaluation is written with prefix `eval`. A
  resumed run first drops the rows logged after its checkpoint, so each step is logged once.
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
from mtvjax.train.resume_guard import check_resume

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
    (e.g. compilation) outside the timed window. `checkpointed(state, step)`, when given, runs on
    every process after each checkpoint save (e.g. to write extra files beside it).
    """
    device_batch: Callable[[Any], Any]
    train_step: Callable[[Any, Any, int], tuple[Any, Any]]
    log_scalars: Callable[[Any, Any, float], dict]
    evaluate: Callable[[Any], dict]
    warm_up: Callable[[Any, Any], None] | None = None
    checkpointed: Callable[[Any, int], None] | None = None


def open_checkpointer(config, workdir: str) -> tuple[Checkpointer, int | None]:
    """The run's checkpointer and its latest step; refuses to overwrite a run without `resume`."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                keep=config.train.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None and not config.resume:
        raise FileExistsError(f"{workdir} already holds checkpoints (latest step {latest}); rerun "
                              "with --config.resume=True to continue, or use a new workdir")
    return checkpointer, latest


def restore_or_init(config, checkpointer: Checkpointer, latest: int | None, workdir: str,
                    abstract_state: Callable[[], Any], init_state: Callable[[], Any], data_iter):
    """The state of the newest intact checkpoint (restoring `data_iter` with it) once `config`
    passes `check_resume`, else a fresh one."""
    if latest is None:
        print(f"{workdir}: initialising a fresh state", flush=True)
        return init_state()
    check_resume(config, checkpointer, workdir)
    state, step = checkpointer.restore_latest(abstract_state(), data_iter)
    print(f"resumed from {workdir} at step {step}", flush=True)
    return state


def run(config, workdir: str, checkpointer: Checkpointer, state, data_iter,
        hooks: TrainHooks) -> tuple[Any, dict]:
    """Trains from `state.step` to `train.num_steps`; returns the final state and evaluation
    ({} when the run stopped early after `stop_after_steps`; SIGTERM exits the process)."""
    t = config.train
    start = int(state.step)
    writer = MetricWriter(workdir, start, enabled=jax.process_index() == 0)
    config_json = config_to_json(config)
    preemption = Preemption()
    window_start, window_steps = time.perf_counter(), 0
    progress = tqdm(total=t.num_steps, initial=start, disable=not sys.stdout.isatty(), unit="step")
    if start < t.num_steps:
        print(f"training steps {start}..{t.num_steps}: compiling the train step first (the first "
              f"step takes longest), then a log line every {t.log_every} steps", flush=True)
    began = time.perf_counter()
    for step in range(start, t.num_steps):
        batch = hooks.device_batch(next(data_iter))
        if step == start and hooks.warm_up is not None:
            hooks.warm_up(state, batch)
            window_start = time.perf_counter()
        state, metrics = hooks.train_step(state, batch, step)
        if step == start:
            jax.block_until_ready(metrics)
            print(f"first step done after {time.perf_counter() - began:.1f} s "
                  "(compilation included)", flush=True)
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
            if hooks.checkpointed is not None:
                hooks.checkpointed(state, done)
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
