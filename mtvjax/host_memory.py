"""Keep freed host memory for reuse, so XLA:CPU steps do not page-fault their buffers every call.

XLA:CPU allocates each call's temporary buffer (456 MB for the MV-DiT bench's mid-size train
step) with `malloc` and frees it when the call ends. glibc serves allocations above its mmap
threshold (at most 32 MiB) with a fresh `mmap` and returns them with `munmap`, so the next call
touches new pages: the kernel faults in and zeroes every 4 KiB page again. Measured on that step
(2 CPU cores): 122,000 minor faults and ~0.2 s of kernel time per call, 20–25 % of the step.

`keep_freed_host_memory()` sets glibc's allocator (`mallopt`) so that freed memory stays in the
process: one arena (`M_ARENA_MAX=1`: large blocks requested from XLA's worker threads would
otherwise go to per-thread heaps, which fall back to `mmap` for them), no `mmap`-backed blocks
(`M_MMAP_MAX=0`) and no trimming of the heap (`M_TRIM_THRESHOLD=-1`). After the first calls the
step then reuses the same pages (0 faults per call). The cost: the heap does not shrink (the
process keeps the peak it reached, which a training loop reaches every step anyway) and threads
share one allocator lock.

Call it at the start of a process, before the first JAX computation: the XLA backend's threads
keep the arena they first allocated from. `mtvjax SUBCOMMAND` and the benchmarks call it;
`MTVJAX_KEEP_HOST_MEMORY=0` in the environment leaves the allocator as it is. Outside glibc
(macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "MTVJAX_KEEP_HOST_MEMORY"
# glibc <malloc.h> parameter numbers and the values set.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))

_applied = False


def keep_freed_host_memory() -> bool:
    """Apply the settings above once per process; True when they are in effect."""
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    return _applied


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):   # not glibc
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
