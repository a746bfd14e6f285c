"""The paper's results table of video evaluations: one row per checkpoint / config.

`add_row(stem, label, report, details)` keeps `stem.json` (the rows, with their details) and
renders `stem.md` from it, columns as in the paper: SSIM ↑, PSNR ↑, LPIPS ↓, FID ↓, FID-VID ↓,
FVD ↓. A new label appends a row; a row with the same label (the same run evaluated again) is
replaced. Both files are written under a temporary name and renamed into place.
"""
from __future__ import annotations

import json
import os

COLUMNS = (("ssim", "SSIM ↑"), ("psnr", "PSNR ↑"), ("lpips", "LPIPS ↓"), ("fid", "FID ↓"),
           ("fid_vid", "FID-VID ↓"), ("fvd", "FVD ↓"))


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def render(rows: list[dict]) -> str:
    lines = ["| run | clips | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = [row["label"], str(row["clips"])] + [_cell(row["metrics"].get(k))
                                                     for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def add_row(stem: str, label: str, report: dict, details: dict) -> list[dict]:
    """Adds (or replaces) the row `label` with the summary metrics of an eval_video report."""
    path = stem + ".json"
    rows = []
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                rows = json.load(f)["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a results table written by this command ({e}); "
                             "choose another evaluate.table") from None
    row = {"label": label, "clips": report["clips"], "frames": report["frames"],
           "metrics": {k: report["metrics"].get(k) for k, _ in COLUMNS}, **details}
    rows = [r for r in rows if r.get("label") != label] + [row]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _write(path, json.dumps({"columns": [k for k, _ in COLUMNS], "rows": rows}, indent=1))
    _write(stem + ".md", render(rows))
    return rows
