"""``summary.csv`` as training curves: top-1 of every head, the losses, the learning rate and, for
methods with a learned generator, the statistics of its masks (``mask_spread``,
``mask_lambda_gap``: docs/training.md, "The generator's masks").

The trainer calls ``render_training_curves(folder.file("summary.csv"), folder.file("curves.png"))``
after each epoch's row (primary rank only); it reads the file, so it costs nothing during steps.
"""

from __future__ import annotations

import math
import os

from ..errors import UsageError
from ..run.records import read_csv_rows
from . import plots

# The generator's mask statistics (trainer.Trainer.mask_diagnostics): a fourth panel when present.
MASK_COLUMNS = ("mask_spread", "mask_lambda_gap")


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_summary(summary_csv: str) -> dict[str, list[float]]:
    """Columns of a summary.csv as float lists (empty or non-numeric cells -> NaN)."""
    if not os.path.isfile(summary_csv):
        raise UsageError(f"{summary_csv}: no such file; training curves need the run's summary.csv")
    rows = read_csv_rows(summary_csv)   # a torn last row of a killed run is dropped
    if not rows:
        raise UsageError(f"{summary_csv} has no epochs yet; draw the curves after the first epoch")
    return {key: [_number(r.get(key)) for r in rows] for key in rows[0]}


def render_training_curves(summary_csv: str, png: str) -> str:
    """Write ``png``: top-1 of each head (and top-5 dashed), every loss column and the lr against
    the epoch, and the generator's mask statistics where the run has them. The PNG carries the
    plotted columns as JSON (``plots.read_data``)."""
    cols = read_summary(summary_csv)
    epochs = cols.get("epoch") or list(range(1, len(next(iter(cols.values()))) + 1))
    top1 = [k for k in cols if k.endswith("_top1") and k != "best_top1"]
    losses = [k for k in cols if "loss" in k]
    masks = [k for k in MASK_COLUMNS if k in cols]
    plt = plots.pyplot()
    panels = 4 if masks else 3
    fig, axes = plt.subplots(1, panels, figsize=(13 * panels / 3, 3.6))
    ax = axes[0]
    for k in top1:
        line, = ax.plot(epochs, cols[k], marker="o", markersize=2, label=k[:-5])
        top5 = k[:-5] + "_top5"
        if top5 in cols:
            ax.plot(epochs, cols[top5], linestyle="--", linewidth=0.8, color=line.get_color())
    ax.set_title("top-1 (solid) and top-5 (dashed), %")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if top1:
        ax.legend(fontsize=7)
    ax = axes[1]
    for k in losses:
        ax.plot(epochs, cols[k], marker="o", markersize=2, label=k)
    ax.set_title("losses")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if losses:
        ax.legend(fontsize=7)
    ax = axes[2]
    if "lr" in cols:
        ax.plot(epochs, cols["lr"], marker="o", markersize=2)
    ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if masks:
        ax = axes[3]
        labels = {"mask_spread": "spread (std over pixels)", "mask_lambda_gap": "|mean - lambda|"}
        for k in masks:
            ax.plot(epochs, cols[k], marker="o", markersize=2, label=labels[k])
        ax.set_title("generator masks (0 spread: global blends)")
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    data = {"epoch": epochs, **{k: cols[k] for k in top1 + losses + (["lr"] if "lr" in cols else []) + masks}}
    data = {k: [None if isinstance(v, float) and math.isnan(v) else v for v in vs] for k, vs in data.items()}
    return plots.save(fig, png, data)
