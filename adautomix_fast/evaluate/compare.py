"""``--compare RUN1 RUN2 ...``: several runs (methods, seeds) side by side in one report.

Each RUN is an evaluation folder (its results.json is read), or a run folder / checkpoint: then
its default evaluation folder is reused when it already holds the requested suites for the same
head, protocol and image count, and is written otherwise (kept in the run for later). The report
has one table per suite, the reliability diagrams overlaid and the occlusion curves in one plot,
the headline as the median of the last 10 epochs' top-1 from each run's summary.csv (the paper's
statistic), and the mean (and spread) over seeds of every number for runs sharing a method.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
from typing import Optional

from ..errors import UsageError
from ..run.records import read_csv_rows
from ..runtime.devices import pick_device
from ..step.precision import resolve_precision
from . import plots
from .context import SUITES, EvalOptions, load_run
from .pipeline import default_folder, evaluate_checkpoint
from .report import REPORT, RESULTS, TITLES, StagedFolder, clean_json, folder_name, write_json

LAST_EPOCHS = 10   # the paper reports the median top-1 of the last 10 epochs


def median_last_epochs(summary_csv: str, head: str, last: int = LAST_EPOCHS) -> Optional[dict]:
    """{"median", "epochs", "final"} of column ``<head>_top1`` over the last ``last`` rows of a
    summary.csv; None when the file or the column is missing."""
    if not os.path.isfile(summary_csv):
        return None
    rows = read_csv_rows(summary_csv)   # a torn last row of a killed run is dropped
    values = [float(r[f"{head}_top1"]) for r in rows if r.get(f"{head}_top1") not in (None, "")]
    if not values:
        return None
    tail = values[-last:]
    return {"median": statistics.median(tail), "epochs": len(tail), "final": values[-1]}


def _load_results(folder: str) -> dict:
    try:
        with open(os.path.join(folder, RESULTS)) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{folder}: unreadable {RESULTS} ({e}); evaluate the run again with --overwrite") from None


def _precision_of(results: dict) -> str:
    """The forward passes' precision of an evaluation (results written before it was recorded
    name only ``amp``, which was bf16 autocast)."""
    return results.get("precision") or ("bf16 autocast" if results.get("amp") else "fp32")


def _precision_here(options: EvalOptions) -> str:
    """The precision an evaluation with these options would use on this machine."""
    return resolve_precision(options.amp, "bf16", pick_device(options.device)).label


def _matches(results: dict, options: EvalOptions) -> bool:
    """An existing evaluation answers this comparison: same protocol, image count, seed and
    precision, and every requested suite present."""
    return (results.get("protocol") == options.protocol and results.get("limit") == options.limit
            and _precision_of(results) == _precision_here(options)
            and results.get("seed") == options.seed and set(options.suites) <= set(results.get("results", {}))
            and (options.head is None or results.get("head") == options.head))


def results_for(path: str, options: EvalOptions, overwrite: bool, say) -> dict:
    """The evaluation of one RUN (read, reused or computed)."""
    if os.path.isfile(os.path.join(path, RESULTS)):
        results = _load_results(path)
        missing = [s for s in options.suites if s not in results.get("results", {})]
        if missing:
            raise UsageError(f"{path} has no {', '.join(missing)} results; "
                             "pass its run folder instead, or fewer --suite")
        results["folder"] = os.path.abspath(path)   # where it is now, should it have moved
        return results
    run = load_run(path, options.checkpoint)          # errors (and the head) before any work
    head = options.head or run.model.HEADLINE
    folder = default_folder(run.run_dir, options, head, timestamp=False)
    if os.path.isfile(os.path.join(folder, RESULTS)) and not overwrite:
        results = _load_results(folder)
        if _matches(results, options):
            say(f"reusing {folder}")
            return results
        raise UsageError(f"{folder} holds an evaluation with other settings; pass --overwrite to redo it")
    _, results = evaluate_checkpoint(path, options, overwrite=overwrite, say=say)
    return results


def key_numbers(suite: str, r: dict) -> dict:
    """The numbers of a suite that go into the comparison table (name -> value)."""
    if suite == "accuracy":
        return {"top-1": r["top1"], "top-5": r["top5"]}
    if suite == "calibration":
        return {"ECE": r["ece"], "top-1": r["top1"]}
    if suite in ("fgsm", "pgd"):
        return {"clean top-1": r["clean_top1"], "attacked top-1": r["top1"], "error": r["error"]}
    if suite == "corruption":
        return {"mean (all cells)": r["mean_all"], "mean (15 standard)": r["mean_standard"]}
    if suite == "occlusion":
        return {f"r={x:.1f}": v for x, v in zip(r["ratios"], r["top1"])}
    return {}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _mean_std(values: list) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def compare(paths: list[str], options: EvalOptions, out: Optional[str] = None, overwrite: bool = False,
            say=print) -> str:
    """Evaluate (or read) every RUN and write the comparison folder; returns its path."""
    if len(paths) < 2:
        raise UsageError("--compare needs at least two runs")
    entries = []
    for path in paths:
        results = results_for(path, options, overwrite, say)
        run = results["run"]
        entries.append({
            "path": os.path.abspath(path), "name": run["name"], "method": run["method"], "arch": run["arch"],
            "seed": run["seed"], "epoch": run["epoch"], "head": results["head"], "results": results,
            "last_epochs": median_last_epochs(os.path.join(run["dir"], "summary.csv"), results["head"]),
        })
    names = [e["name"] for e in entries]
    if len(set(names)) < len(names):   # the same run name in two places: add the parent folder
        for e in entries:
            e["name"] = f"{os.path.basename(os.path.dirname(e['results']['run']['dir']))}/{e['name']}"
    stamp = f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    head = options.head or "headline"
    dest = out or os.path.join(os.path.dirname(entries[0]["results"]["run"]["dir"]),
                               folder_name(options.suites, SUITES, head, options.protocol, stamp)
                               .replace("eval-", "compare-", 1))
    staged = StagedFolder(dest, overwrite, say)
    try:
        data = _aggregate(entries, options)
        pictures = _draw(entries, options, staged.path)
        data["pictures"] = pictures
        write_json(staged.file(RESULTS), data)
        with open(staged.file(REPORT), "w") as f:
            f.write(_render(data, entries, options) + "\n")
        return staged.commit()
    except BaseException:
        staged.discard()
        raise


def _group_key(e: dict) -> str:
    return f"{e['method']} ({e['arch']})"


def _aggregate(entries: list[dict], options: EvalOptions) -> dict:
    runs = []
    for e in entries:
        row = {"name": e["name"], "path": e["path"], "method": e["method"], "arch": e["arch"], "seed": e["seed"],
               "epoch": e["epoch"], "head": e["head"], "last_epochs": e["last_epochs"], "suites": {}}
        for suite in options.suites:
            row["suites"][suite] = key_numbers(suite, e["results"]["results"][suite])
        runs.append(row)
    groups: dict = {}
    for row in runs:
        groups.setdefault(_group_key(row), []).append(row)
    methods = {}
    for key, rows in groups.items():
        agg = {"runs": [r["name"] for r in rows], "seeds": [r["seed"] for r in rows]}
        med = [r["last_epochs"]["median"] if r["last_epochs"] else None for r in rows]
        agg["median_last_epochs"] = dict(zip(("mean", "std"), _mean_std(med)))
        agg["suites"] = {}
        for suite in options.suites:
            keys = list(rows[0]["suites"][suite])
            agg["suites"][suite] = {k: dict(zip(("mean", "std"), _mean_std([r["suites"][suite].get(k) for r in rows])))
                                    for k in keys}
        methods[key] = agg
    return clean_json({"format": "adautomix_fast.comparison", "version": 1,
                       "created": datetime.datetime.now().isoformat(timespec="seconds"),
                       "protocol": options.protocol, "head": options.head, "suites": list(options.suites),
                       "limit": options.limit, "seed": options.seed, "runs": runs, "methods": methods})


def _draw(entries: list[dict], options: EvalOptions, folder: str) -> dict:
    pictures = {}
    if "calibration" in options.suites:
        curves = [(e["name"], e["results"]["results"]["calibration"]["bins"],
                   e["results"]["results"]["calibration"]["ece"])
                  for e in entries]
        plots.reliability_diagram(curves, os.path.join(folder, "reliability.png"),
                                  f"Reliability ({options.protocol} ECE)")
        pictures["calibration"] = ["reliability.png"]
    if "occlusion" in options.suites:
        curves = [(e["name"], e["results"]["results"]["occlusion"]["ratios"],
                   e["results"]["results"]["occlusion"]["top1"])
                  for e in entries]
        plots.occlusion_curves(curves, os.path.join(folder, "occlusion.png"), "Occlusion robustness")
        pictures["occlusion"] = ["occlusion.png"]
    return pictures


def _render(data: dict, entries: list[dict], options: EvalOptions) -> str:
    lines = [f"# Comparison of {len(entries)} runs", "",
             f"- protocol: **{options.protocol}**; head: {options.head or 'each run’s headline head'}; "
             f"images: {entries[0]['results']['data']['images']} ({entries[0]['results']['data']['dataset']} val)",
             "- headline: median top-1 of the last epochs in each run's summary.csv (the paper's statistic)", "",
             "## Headline", "",
             "| run | method | arch | seed | epochs | head | median top-1, last epochs | final top-1 |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for r in data["runs"]:
        le = r["last_epochs"] or {}
        median = f"{_fmt(le['median'])} (last {le['epochs']})" if le else "n/a"
        lines.append(f"| {r['name']} | {r['method']} | {r['arch']} | {r['seed']} | {r['epoch']} | {r['head']} | "
                     f"{median} | {_fmt(le.get('final'))} |")
    lines.append("")
    for suite in options.suites:
        if suite == "cam":
            lines += [f"## {TITLES[suite]}", ""]
            for e in entries:
                lines.append(f"- {e['name']}: `{os.path.join(e['results']['folder'], 'gradcam.png')}`")
            lines.append("")
            continue
        keys = list(data["runs"][0]["suites"][suite])
        lines += [f"## {TITLES[suite]}", "", "| run | method | seed | " + " | ".join(keys) + " |",
                  "| --- | --- | ---: | " + " | ".join("---:" for _ in keys) + " |"]
        for r in data["runs"]:
            lines.append(f"| {r['name']} | {r['method']} | {r['seed']} | "
                         + " | ".join(_fmt(r["suites"][suite].get(k)) for k in keys) + " |")
        lines.append("")
        for picture in data.get("pictures", {}).get(suite, []):
            lines += [f"![{suite}]({picture})", ""]
    lines += ["## Mean over seeds, per method", "",
              "| method | runs | median top-1, last epochs | " + " | ".join(
                  f"{s}: {k}" for s in options.suites if s != "cam" for k in data["runs"][0]["suites"][s]) + " |",
              "| --- | ---: | ---: | " + " | ".join(
                  "---:" for s in options.suites if s != "cam" for _ in data["runs"][0]["suites"][s]) + " |"]
    for key, agg in data["methods"].items():
        cells = [_pm(agg["suites"][s][k]) for s in options.suites if s != "cam" for k in agg["suites"][s]]
        lines.append(f"| {key} | {len(agg['runs'])} | {_pm(agg['median_last_epochs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(stat: dict) -> str:
    if stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"
