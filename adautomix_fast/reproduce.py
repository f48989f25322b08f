"""``compare --paper 1 --column cifar100-r18``: a column of a published table as a comparison.

The table and its column (``published.py``) give the methods (the rows this engine trains), the
setting (the column's preset, with the column's epochs) and the numbers to stand beside the
measured ones. The report adds, per method, the measured statistic (the headline head's median
of the last 10 epochs, the paper's statistic; the mean ± sample standard deviation over
``--seeds``), the published number and the difference, and a plot of measured against published.
Training flags given to compare come after the column's, so ``--epochs 10`` or ``--dataset
digits`` changes the setting: the report then says in one line that the published numbers are of
another setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from . import published
from .errors import UsageError
from .evaluate.plots import pyplot
from .presets import PRESETS
from .registry import METHODS

# The comparison statistic set beside a published top-1: the paper's median of the last 10 epochs.
MEASURED_KEY = "headline_top1_median_last10"


@dataclass
class Selection:
    table: published.Table
    column: published.Column
    methods: list[str]                                  # what compare trains, the table's order
    not_in_engine: list[str] = field(default_factory=list)   # rows this engine does not implement
    flags: list[str] = field(default_factory=list)      # the column's training flags

    @property
    def label(self) -> str:
        return f"{self.table.key}, column {self.column.name}"

    def to_dict(self) -> dict[str, Any]:
        c = self.column
        return {"table": self.table.key, "title": self.table.title, "source": self.table.source, "column": c.name,
                "dataset": c.dataset, "arch": c.arch, "epochs": c.epochs, "statistic": c.statistic,
                "preset": c.preset, "note": c.note, "published": dict(c.cells), "not_in_engine": self.not_in_engine}


def _columns_text(t: published.Table) -> str:
    return ", ".join(c.name for c in t.columns)


def select(paper: str, column: Optional[str], methods: Optional[list[str]]) -> Selection:
    """The methods, flags and published numbers of ``--paper``/``--column``; every mismatch one line."""
    try:
        t = published.table(paper)
    except KeyError:
        raise UsageError(f"--paper {paper!r}: no such table; choose from {', '.join(published.TABLES)} "
                         "(or the table's number, e.g. --paper 1)") from None
    if not t.rows_are_methods:
        raise UsageError(f"--paper {paper}: {t.key}'s rows are ablation settings, not methods; compare trains "
                         "methods (its numbers are in adautomix_fast.published; docs/results.md)")
    trainable = [c for c in t.columns if c.statistic == "top1"]
    if not trainable:
        stats = sorted({c.statistic for c in t.columns})
        raise UsageError(f"--paper {paper}: {t.key} reports {', '.join(stats)}, not the top-1 compare measures; "
                         "train its setting with the top-1 table's column and run python -m adautomix_fast.evaluate "
                         "on the runs")
    if column is None:
        if len(trainable) > 1:
            raise UsageError(f"--paper {paper}: {t.key} has {len(trainable)} columns; choose one with --column "
                             f"({_columns_text(t)})")
        col = trainable[0]
    else:
        match = [c for c in trainable if c.name == column]
        if not match:
            raise UsageError(f"--column {column!r}: {t.key} has no such column; its columns: {_columns_text(t)}")
        col = match[0]
    if col.preset is None or col.preset not in PRESETS:
        raise UsageError(f"--column {col.name}: this engine has no preset for its setting ({col.dataset}, {col.arch}); "
                         "compare it by hand with --dataset/--arch and the recipe's flags")
    rows = list(col.cells)
    in_engine = [m for m in rows if m in METHODS]
    # --methods: some of the column's rows, or other methods beside them (without a published number)
    chosen = in_engine if methods is None else list(methods)
    flags = ["--preset", col.preset]
    if PRESETS[col.preset].get("epochs") != col.epochs:
        flags += ["--epochs", str(col.epochs)]
    return Selection(t, col, chosen, [m for m in rows if m not in METHODS], flags)


def setting_difference(selection: Selection, cfg) -> str:
    """How the runs' setting differs from the column's, in words ("" when it is the column's)."""
    c = selection.column
    diffs = [f"{name} {ours}, not {theirs}" for name, ours, theirs in
             (("dataset", cfg.dataset, c.dataset), ("arch", cfg.arch, c.arch), ("epochs", cfg.epochs, c.epochs))
             if ours != theirs]
    return "; ".join(diffs)


def annotate(entries: list[dict], selection: Selection) -> list[dict]:
    """Per row of the column (measured or not) and per measured method outside it: published,
    measured (mean and std over the seeds), difference (measured mean - published); the table's
    order."""
    cells = selection.column.cells
    by_method = {e["method"]: e for e in entries}
    order = list(cells) + [m for m in by_method if m not in cells]
    out = []
    for m in order:
        e = by_method.get(m, {})
        measured = e.get(MEASURED_KEY)
        pub = cells.get(m)
        out.append({"method": m, "published": pub, "measured": measured, "measured_std": e.get(f"{MEASURED_KEY}_std"),
                    "n_seeds": e.get("n_seeds", 0), "in_engine": m in METHODS, "compared": m in selection.methods,
                    "difference": None if measured is None or pub is None else measured - pub})
    return out


def _num(v: Optional[float], fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(rows: list[dict], selection: Selection, mismatch: str) -> list[str]:
    c = selection.column
    head = [f"## Against the published numbers: {selection.table.title}", "",
            f"Source: {selection.table.source}. Column {c.name}: {c.dataset}, {c.arch}, {c.epochs} epochs "
            f"(preset `{c.preset}`). Measured: the headline head's top-1, median of the last 10 epochs, mean ± "
            "sample standard deviation over the seeds; difference: measured mean - published."]
    if c.note:
        head += ["", f"Note on this column: {c.note}."]
    if mismatch:
        head += ["", f"**The runs' setting is not the column's ({mismatch}): the published numbers are of another "
                     "setting, shown for reference.**"]
    lines = ["| method | measured | published | difference | seeds |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        measured = _num(r["measured"]) + ("" if r["measured_std"] is None else f" ± {r['measured_std']:.2f}")
        if r["measured"] is None:
            measured = ("not in this engine" if not r["in_engine"] else "not trained yet" if r["compared"]
                        else "not in this comparison")
        lines.append(f"| {r['method']} | {measured} | {_num(r['published'])} | {_num(r['difference'], '{:+.2f}')} | "
                     f"{r['n_seeds']} |")
    return head + [""] + lines + [""]


def plot(folder: str, rows: list[dict], selection: Selection, save_png, mismatch: str = "") -> None:
    """paper.png: measured against published, one point per method (seeds' std as error bars), with
    the line measured = published."""
    plt = pyplot()
    points = [r for r in rows if r["measured"] is not None and r["published"] is not None]
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    for i, r in enumerate(points):
        ax.errorbar(r["published"], r["measured"], yerr=r["measured_std"], fmt="o", capsize=3, color=f"C{i % 10}")
        ax.annotate(r["method"], (r["published"], r["measured"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    values = [v for r in points for v in (r["published"], r["measured"])]
    if values:
        lo, hi = min(values) - 1, max(values) + 1
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="measured = published")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(f"published top-1 (%), {selection.table.key}")
    ax.set_ylabel("measured top-1 (%), median of the last 10 epochs")
    ax.set_title(f"{selection.column.name}: measured against published"
                 + ("\n(the runs' setting is another: " + mismatch + ")" if mismatch else ""), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, folder, "paper.png")
    plt.close(fig)
