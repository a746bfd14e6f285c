"""Where a compiled step spends its time: a per-op profile table and HLO op counts.

Used by `python -m mtvjax.bench.mvdit --profile`. `trace_op_seconds` runs a compiled function under
`jax.profiler.trace(create_perfetto_trace=True)` and sums, per HLO instruction, the durations of
the runtime's per-op events (XLA:CPU's thunk executor tags each with `hlo_op` / `hlo_module`).
`op_metadata` reads each instruction's opcode and `op_name` metadata from `compiled.as_text()`,
which names the model path and the pass: `transpose(jvp(...))` is the backward pass, `jvp(...)`
the forward, anything else (the optimizer update, the loss) "other". Ops can run concurrently on
the thread pool, so shares are of the summed op time, not of the wall time.

`host_costs` measures what the op table cannot show: the process's wall, user and kernel time
and its minor page faults per call (`getrusage`). Kernel time with ~one fault per 4 KiB of the
step's temporary buffer means the buffer is handed back to the OS and faulted in again every
call (see `mtvjax.host_memory`).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import resource
import tempfile
import time
from typing import Callable, NamedTuple

import jax

COUNTED_OPCODES = ("transpose", "copy", "convert", "dot", "fusion")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+)")


class OpTime(NamedTuple):
    name: str           # HLO instruction name (e.g. "ynn_fusion.3")
    opcode: str
    phase: str          # forward | backward | other
    where: str          # model path from the metadata, shortened
    seconds: float      # per call
    share: float        # of the summed op time


class HostCosts(NamedTuple):
    """Per-call process costs."""
    wall: float         # seconds
    user: float         # CPU seconds in user mode, all threads
    system: float       # CPU seconds in the kernel, all threads
    minor_faults: float


def host_costs(run: Callable[[], None], calls: int) -> HostCosts:
    """Wall/user/kernel seconds and minor page faults per call of `run()` (blocking)."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(calls):
        run()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return HostCosts(wall / calls, (after.ru_utime - before.ru_utime) / calls,
                     (after.ru_stime - before.ru_stime) / calls,
                     (after.ru_minflt - before.ru_minflt) / calls)


def host_cost_line(costs: HostCosts, temp_bytes: int | None = None) -> str:
    line = (f"  per step: wall {costs.wall * 1e3:.0f} ms, CPU user {costs.user * 1e3:.0f} ms, "
            f"kernel {costs.system * 1e3:.0f} ms, {costs.minor_faults:.0f} minor page faults")
    if temp_bytes:
        line += f" (temporary buffer {temp_bytes / 2**20:.0f} MiB = {temp_bytes // 4096} pages)"
    return line


def op_metadata(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (opcode, op_name metadata or "")} for every instruction of the module.

    An instruction without metadata (XLA drops it on many fusions) takes that of its first
    operand that has some, so a fused matmul is named after the op that feeds it."""
    table, operands = {}, {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        op_name = _OP_NAME.search(line)
        table[name] = (opcode, op_name.group(1) if op_name else "")
        args = line[match.end():].split(")", 1)[0]
        operands[name] = _OPERAND.findall(args)
    for _ in range(3):      # follow chains of unnamed producers a few steps
        for name, (opcode, op_name) in table.items():
            if not op_name:
                named = [table[o][1] for o in operands[name] if table.get(o, ("", ""))[1]]
                table[name] = (opcode, named[0] if named else "")
    return table


def hlo_counts(hlo_text: str) -> dict[str, int]:
    """Number of instructions of each of `COUNTED_OPCODES` in the module (fused bodies
    included)."""
    counts = collections.Counter(m.group(2) for m in map(_INSTRUCTION.match,
                                                         hlo_text.splitlines()) if m)
    return {op: counts.get(op, 0) for op in COUNTED_OPCODES}


def phase_of(op_name: str) -> str:
    if "transpose(jvp(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "other"


def short_path(op_name: str) -> str:
    """The module path of an `op_name` without the jit / autodiff / scan wrappers."""
    parts = [p for p in op_name.split("/") if p and not re.match(
        r"^(jit\(|jvp\(|transpose\(|while|body|closed_call|checkpoint|remat|vmap\()", p)]
    return "/".join(parts)


def trace_op_seconds(run: Callable[[], None], calls: int) -> dict[str, float]:
    """Per-call seconds of each HLO instruction over `calls` calls of `run()` (which must block
    until its results are ready), from a profiler trace in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="mtvjax_profile_") as log_dir:
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            for _ in range(calls):
                run()
        paths = glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True)
        if not paths:
            raise FileNotFoundError(f"{log_dir}: the profiler wrote no perfetto_trace.json.gz")
        return op_seconds_from_trace(max(paths, key=os.path.getmtime), calls)


def op_seconds_from_trace(path: str, calls: int) -> dict[str, float]:
    """Per-call seconds of each `hlo_op` in a perfetto (Chrome JSON) trace file."""
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    seconds = collections.Counter()
    for event in events:
        args = event.get("args") or {}
        if event.get("ph") == "X" and "hlo_op" in args:
            seconds[args["hlo_op"]] += event.get("dur", 0.0) * 1e-6 / calls
    return dict(seconds)


def op_table(seconds: dict[str, float], metadata: dict[str, tuple[str, str]]) -> list[OpTime]:
    """`OpTime` rows, slowest first."""
    total = sum(seconds.values()) or 1.0
    rows = []
    for name, s in seconds.items():
        opcode, op_name = metadata.get(name, ("?", ""))
        rows.append(OpTime(name, opcode, phase_of(op_name), short_path(op_name), s, s / total))
    return sorted(rows, key=lambda r: -r.seconds)


def summary_lines(rows: list[OpTime], counts: dict[str, int], top: int = 25) -> list[str]:
    """The printed account: time by phase, time by op kind, the `top` ops, the HLO counts."""
    total = sum(r.seconds for r in rows) or 1.0
    lines = [f"  summed op time {total * 1e3:.1f} ms per step (ops overlap on the thread pool)"]
    for title, key in (("phase", lambda r: r.phase), ("kind", _kind), ("module", _module)):
        by = collections.Counter()
        for r in rows:
            by[key(r)] += r.seconds
        lines.append(f"  by {title}: " + ", ".join(f"{k} {100 * v / total:.0f}%"
                                                   for k, v in by.most_common()))
    lines.append(f"  {'ms':>7} {'share':>6}  {'phase':<8} {'op':<34} where")
    for r in rows[:top]:
        lines.append(f"  {r.seconds * 1e3:7.2f} {100 * r.share:5.1f}%  {r.phase:<8} "
                     f"{r.name[:34]:<34} {r.where[-70:]}")
    lines.append("  HLO ops: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return lines


_BLOCK_PARTS = re.compile(r"^(blocks|tail|block_\d+|motion_block|plain|\w+\._blocks)$")


def _module(row: OpTime) -> str:
    """The block submodule an op belongs to (attn1, ff, self_attn, ...), else the top-level one,
    else "unnamed" (e.g. scan bookkeeping, the optimizer)."""
    parts = row.where.split("/")[:-1]
    inside = [p for p in parts if not _BLOCK_PARTS.match(p)]
    if len(inside) < len(parts):                      # under the block stack
        return inside[0] if inside else "block"
    return parts[0] if parts else "unnamed"


def _kind(row: OpTime) -> str:
    """Coarse kind of an op: matmul (YNNPACK/oneDNN/dot fusions), copy/transpose, slicing (scan
    bookkeeping), other elementwise/reduction fusions."""
    name = row.name
    if "ynn" in name or "dot" in name or "onednn" in name or row.opcode in ("dot", "custom-call"):
        return "matmul"
    if "copy" in name or "transpose" in name or row.opcode in ("copy", "transpose"):
        return "copy/transpose"
    if "dynamic" in name or "slice" in name:
        return "slicing"
    return "elementwise/reduce"
