"""Codebook usage figure for the motion tokenizer: sorted code frequencies, active fraction, perplexity.

Draws with matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def code_usage_stats(counts) -> dict:
    """Active fraction and perplexity of a code-usage histogram.

    Args:
      counts: `[num_codes]` non-negative usage counts, one per codebook entry.
    Returns:
      dict with `num_codes`, `num_active` (codes used at least once), `active_fraction`
      (`num_active / num_codes`) and `perplexity` (`exp` of the usage entropy in nats: equals
      `num_codes` under uniform use, 1 when one code takes everything, 0 for an empty histogram).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D histogram, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("counts must be finite and non-negative")
    total = counts.sum()
    num_active = int(np.count_nonzero(counts))
    if total > 0:
        p = counts[counts > 0] / total
        perplexity = float(np.exp(-np.sum(p * np.log(p))))
    else:
        perplexity = 0.0
    return {"num_codes": int(counts.size), "num_active": num_active,
            "active_fraction": num_active / counts.size, "perplexity": perplexity}


def plot_code_usage(counts, out_path, title: str | None = None) -> dict:
    """Writes a PNG of code usage frequencies sorted in descending order (log y axis).

    The frequency of each code (its share of all assignments) is drawn as a step curve over the
    code rank; unused codes have no bar (they cannot be shown on a log axis), so the curve ends at
    the last active code and the unused tail is shaded. A dashed line marks uniform usage
    (1 / num_codes). The legend gives the active fraction and perplexity.

    Args:
      counts: `[num_codes]` non-negative usage counts.
      out_path: PNG path; parent folders are created.
      title: optional figure title (the statistics are appended to it).
    Returns:
      The dict of `code_usage_stats` (`active_fraction`, `perplexity`, `num_codes`, `num_active`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stats = code_usage_stats(counts)
    counts = np.asarray(counts, dtype=np.float64)
    n, active = stats["num_codes"], stats["num_active"]
    total = counts.sum()
    freq = np.sort(counts)[::-1] / total if total > 0 else np.zeros(n)

    fig = Figure(figsize=(7.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    label = (f"active {active}/{n} = {stats['active_fraction']:.1%}, "
             f"perplexity {stats['perplexity']:.1f}")
    if active:
        used = freq[:active]
        ax.fill_between(np.arange(active + 1), np.append(used, used[-1]), step="post",
                        color="tab:blue", alpha=0.35, linewidth=0)
        ax.step(np.arange(active + 1), np.append(used, used[-1]), where="post", color="tab:blue",
                label=label)
        ax.set_yscale("log")
        ax.axhline(1.0 / n, color="tab:gray", linestyle="--", linewidth=1,
                   label=f"uniform usage 1/{n}")
    else:
        ax.plot([], [], color="tab:blue", label=label)
    if active < n:
        ax.axvspan(active, n, color="tab:red", alpha=0.08, label=f"unused codes ({n - active})")
    ax.set_xlim(0, n)
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("usage frequency")
    heading = f"codebook usage: {active}/{n} active, perplexity {stats['perplexity']:.1f}"
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()

    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return stats
