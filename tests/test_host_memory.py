"""mtvjax.host_memory: with it, an XLA:CPU call reuses its temporary buffer's pages instead of
faulting them in again every call; `MTVJAX_KEEP_HOST_MEMORY=0` leaves the allocator alone.

Each case runs in a fresh process: the setting must come before the backend's threads allocate,
and it would otherwise change the allocator of the test process itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtvjax.bench.mvdit_profile import host_costs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc allocator settings (Linux only)")

# Runs a jitted program with a temporary buffer of > 100 MiB (far above glibc's mmap threshold)
# and reports the minor page faults of each of its last calls. The first calls may still grow the
# heap (a call's buffer is freed just after its result is ready, so the next call can find it in
# use and take new pages), hence the warm-up and the median.
SCRIPT = r"""
import json, sys
from mtvjax.host_memory import keep_freed_host_memory
kept = keep_freed_host_memory()
import jax, jax.numpy as jnp
from mtvjax.bench.mvdit_profile import host_costs

@jax.jit
def f(x):
    a = jnp.tanh(x) @ x
    b = jnp.exp(-a * a) @ x
    c = jnp.sin(b) @ a
    return (a + b + c).sum()

x = jnp.ones((3072, 3072), jnp.float32) * 1e-3
compiled = f.lower(x).compile()
temp = compiled.memory_analysis().temp_size_in_bytes
run = lambda: compiled(x).block_until_ready()
for _ in range(8):
    run()
faults = sorted(host_costs(run, 1).minor_faults for _ in range(7))
print(json.dumps({"kept": kept, "temp_pages": temp // 4096, "faults": faults[3]}))
"""


def _small_pages() -> bool:
    """Whether anonymous memory is faulted in 4 KiB pages (transparent huge pages not "always")."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" not in f.read()
    except OSError:
        return True


def _run(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu", **env))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults():
    result = _run()
    if not result["kept"]:
        pytest.skip("not glibc: the allocator settings do not apply")
    assert result["temp_pages"] > 100 * 2**20 // 4096, result     # the case the module is for
    # Without the settings every call faults in ~every page of the buffer again (4 KiB pages;
    # 27,000+ here). With them, calls reuse the pages (0–2 faults measured).
    assert result["faults"] < 0.05 * result["temp_pages"], result


def test_environment_switch_leaves_the_allocator_alone():
    result = _run(MTVJAX_KEEP_HOST_MEMORY="0")
    assert result["kept"] is False
    if _small_pages():
        # 4 KiB pages: the buffer goes back to the OS and is faulted in again on every call
        assert result["faults"] > 0.5 * result["temp_pages"], result


def test_host_costs_counts_faults_of_fresh_memory():
    import mmap
    size = 64 * 2**20

    def touch_new_pages():
        # a fresh anonymous mapping each time, written page by page
        with mmap.mmap(-1, size) as m:
            m[::4096] = b"\1" * (size // 4096)
    costs = host_costs(touch_new_pages, 2)
    assert costs.wall > 0 and costs.user >= 0 and costs.system >= 0
    if _small_pages():
        assert costs.minor_faults > 0.5 * size / 4096, costs
