"""Multi-process start-up: `jax.distributed.initialize` from the environment.

Explicit settings come from `MTVJAX_COORDINATOR` (host:port), `MTVJAX_NUM_PROCESSES` and
`MTVJAX_PROCESS_ID` (as `launch/multiprocess_local.sh` and `launch/slurm.sbatch` set them).
Without them, on a TPU VM pod or inside a SLURM job with several tasks, JAX's own cluster
detection finds the coordinator; otherwise the run is single-process and nothing is initialised.
`MTVJAX_HEARTBEAT_TIMEOUT` (seconds, default 60) bounds how long surviving processes wait
before failing with an error when another process dies.

`process_slot` reads the same two variables for work split without `jax.distributed`
(independent processes that each take every count-th item: dataset building, batch generation).
"""
from __future__ import annotations

import os

import jax

_initialized = False


def _cluster_detected() -> bool:
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
    return slurm_tasks > 1 or tpu_pod


def initialize_from_env() -> bool:
    """Initialises multi-process JAX if the environment asks for it; True when it did."""
    global _initialized
    if _initialized:
        return True
    heartbeat = int(os.environ.get("MTVJAX_HEARTBEAT_TIMEOUT", "60"))
    coordinator = os.environ.get("MTVJAX_COORDINATOR")
    if coordinator:
        for name in ("MTVJAX_NUM_PROCESSES", "MTVJAX_PROCESS_ID"):
            if name not in os.environ:
                raise RuntimeError(f"MTVJAX_COORDINATOR is set but {name} is not")
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=int(os.environ["MTVJAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["MTVJAX_PROCESS_ID"]),
                                   heartbeat_timeout_seconds=heartbeat)
    elif _cluster_detected():
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
    else:
        return False
    _initialized = True
    return True


def process_slot(environ=os.environ) -> tuple[int, int]:
    """(index, count) of this process from MTVJAX_PROCESS_ID / MTVJAX_NUM_PROCESSES."""
    try:
        index = int(environ.get("MTVJAX_PROCESS_ID", 0))
        count = int(environ.get("MTVJAX_NUM_PROCESSES", 1))
    except ValueError:
        raise ValueError("MTVJAX_PROCESS_ID / MTVJAX_NUM_PROCESSES must be integers") from None
    if not 0 <= index < count:
        raise ValueError(f"MTVJAX_PROCESS_ID={index} is not in [0, MTVJAX_NUM_PROCESSES={count})")
    return index, count
