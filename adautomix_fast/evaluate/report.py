"""The evaluation folder: results.json (every number), report.md (the tables) and the pictures.

Written atomically: everything goes into a hidden temporary folder beside the destination, which
is renamed into place at the end (``--overwrite`` swaps an existing folder out the same way), so
a failure or an interrupt leaves nothing half-written. An evaluation killed outright (SIGKILL, an
unhandled SIGTERM, a lost node) leaves its temporary folder behind; the next evaluation into the
same destination removes it, unless a live evaluation still holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import re
import shutil
import tempfile
from importlib import metadata
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ..errors import UsageError

RESULTS, REPORT = "results.json", "report.md"
FORMAT = "adautomix_fast.evaluation"
FORMAT_VERSION = 1


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def _try_flock(fd: int, flags: int) -> bool:
    """flock ``fd``; False where another process holds it or the file system has no flock (then
    nothing can be shown to be stale, and nothing is removed)."""
    try:
        fcntl.flock(fd, flags)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _parent_lock(parent: str) -> Iterator[bool]:
    """An exclusive lock on the parent folder while staging folders are made and swept, so that a
    sweep never sees a new folder in the instant before its maker has locked it. Yields whether
    the lock was taken (sweeping only then)."""
    try:
        fd = _open_dir(parent)
    except OSError:                    # a folder we may write but not read: no sweep
        yield False
        return
    try:
        yield _try_flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)   # releases the lock


class StagedFolder:
    """A destination folder written through a temporary sibling; ``commit()`` renames it in.

    The sibling is ``.<destination name>.tmp-<8 characters of mkdtemp>``; its maker holds a
    ``flock`` on it until it is committed or discarded. The kernel drops the lock however the
    maker ends, so a sibling of that name nobody holds was left by a killed evaluation: the next
    one into the same destination removes it (``removed`` lists what it removed).
    """

    def __init__(self, dest: str, overwrite: bool, say: Optional[Callable[[str], None]] = None):
        self.dest = os.path.abspath(dest)
        if os.path.exists(self.dest) and not overwrite:
            raise UsageError(f"{self.dest} already exists; pass --overwrite to replace it, --timestamp for a new "
                             "folder, or --out DIR")
        parent = os.path.dirname(self.dest)
        os.makedirs(parent, exist_ok=True)
        prefix = f".{os.path.basename(self.dest)}.tmp-"
        self._fd: Optional[int] = None
        with _parent_lock(parent) as locked:
            self.removed = _remove_stale(parent, prefix) if locked else []
            self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)
            fd = _open_dir(self.path)
            if _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                self._fd = fd
            else:
                os.close(fd)
        if say is not None:
            for path in self.removed:
                say(f"removed {path}, left by an evaluation that was killed")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)   # mkdtemp makes it private; the result is an ordinary folder

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def commit(self) -> str:
        old = None
        if os.path.exists(self.dest):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.dest)}.old-", dir=os.path.dirname(self.dest))
            os.rmdir(old)
            os.rename(self.dest, old)
        os.rename(self.path, self.dest)
        self._release()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.dest

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _remove_stale(parent: str, prefix: str) -> list[str]:
    """Remove the staging folders of ``prefix`` in ``parent`` that no live evaluation holds."""
    pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}")   # mkdtemp's names, nothing else
    removed = []
    for name in sorted(os.listdir(parent)):
        if not pattern.fullmatch(name):
            continue
        path = os.path.join(parent, name)
        try:
            fd = _open_dir(path)       # not a folder, a link, or gone meanwhile: not ours to remove
        except OSError:
            continue
        try:
            if _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                shutil.rmtree(path, ignore_errors=True)
                if not os.path.exists(path):
                    removed.append(path)
        finally:
            os.close(fd)
    return removed


def clean_json(value):
    """JSON-safe copy: private keys (leading underscore) dropped, NaN/inf -> None, numpy -> Python."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(clean_json(data), f, indent=2, allow_nan=False)
        f.write("\n")


def versions() -> dict:
    """Versions of everything that can change a number."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("adautomix_fast", "torchvision", "numpy", "torchmetrics", "torchattacks", "grad-cam",
                 "imagecorruptions-imaug", "matplotlib", "scikit-image"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------------------- report.md
def _f(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def suite_tables(suite: str, r: dict) -> list[str]:
    """Markdown lines for one suite's results (shared with the compare report's detail)."""
    lines: list[str] = []
    if suite == "accuracy":
        lines += ["| head | top-1 | top-5 |", "| --- | ---: | ---: |"]
        lines += [f"| {h} | {_f(v['top1'])} | {_f(v['top5'])} |" for h, v in r["heads"].items()]
    elif suite == "calibration":
        lines += [f"ECE ({r['protocol']} protocol, {r['n_bins']} bins): **{_f(r['ece'])}%** "
                  f"(correct {_f(r['ece_correct'])}%, official {_f(r['ece_official'])}%); top-1 {_f(r['top1'])}%, "
                  f"mean confidence {_f(r['mean_confidence'])}%.", "",
                  "| confidence bin | images | accuracy (%) | mean confidence (%) |", "| --- | ---: | ---: | ---: |"]
        b = r["bins"]
        for m, count in enumerate(b["count"]):
            lines.append(f"| ({b['edges'][m]:.1f}, {b['edges'][m + 1]:.1f}] | {count} | "
                         f"{_f(100 * b['accuracy'][m]) if count else '-'} | "
                         f"{_f(100 * b['confidence'][m]) if count else '-'} |")
    elif suite in ("fgsm", "pgd"):
        what = f"eps {r['eps']:g}/255" + (f", {r['steps']} steps of {r['alpha']:g}/255, random start"
                                          if suite == "pgd" else "")
        lines += [f"{suite.upper()} ({what}; {r['protocol']} protocol: step in {r['space']}).", "",
                  "| clean top-1 | attacked top-1 | attacked error |", "| ---: | ---: | ---: |",
                  f"| {_f(r['clean_top1'])} | {_f(r['top1'])} | {_f(r['error'])} |"]
    elif suite == "corruption":
        source = (f"synthesised with {r['library']} at {r['synthesised_at']} px (seed {r['seed']})"
                  if r["source"] == "synthesised" else f"{r['layout']} files in {r['folder']}")
        clean = f"; clean top-1 on the same images {_f(r['clean_top1'])}%" if "clean_top1" in r else ""
        lines += [f"Corruptions {source}. Mean top-1 over all {r['cells']} cells: **{_f(r['mean_all'])}%**; "
                  f"over the 15 standard corruptions: **{_f(r['mean_standard'])}%**{clean}.", ""]
        sev = r["severities"]
        lines += ["| corruption | " + " | ".join(f"s{s}" for s in sev) + " | mean |",
                  "| --- | " + " | ".join("---:" for _ in sev) + " | ---: |"]
        for c in r["corruptions"]:
            lines.append(f"| {c} | " + " | ".join(_f(r["top1"][c][str(s)]) for s in sev)
                         + f" | {_f(r['per_corruption'][c])} |")
        lines.append("| **mean** | " + " | ".join(_f(r["per_severity"][str(s)]) for s in sev)
                     + f" | {_f(r['mean_all'])} |")
    elif suite == "occlusion":
        lines += [f"{r['grid']}x{r['grid']} patches of {r['patch']} px, masked with {r['fill']}, seed {r['seed']}.", "",
                  "| occluded ratio | " + " | ".join(f"{x:.1f}" for x in r["ratios"]) + " |",
                  "| --- | " + " | ".join("---:" for _ in r["ratios"]) + " |",
                  "| patches | " + " | ".join(str(k) for k in r["masked_patches"]) + " |",
                  "| top-1 | " + " | ".join(_f(v) for v in r["top1"]) + " |"]
    elif suite == "cam":
        lines += [f"{r['method']} on `{r['target_layer']}`; mixes by {r['mixer']}.", "",
                  "| image | label | prediction | p(label) | mixed with | p(a) on mix | p(b) on mix |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for c, m in zip(r["clean"], r["mixed"]):
            lines.append(f"| {c['index']} | {c['label']} | {c['pred']} | {_f(c['prob_label'], 3)} | {m['b']} | "
                         f"{_f(m['prob_a'], 3)} | {_f(m['prob_b'], 3)} |")
    return lines


TITLES = {"accuracy": "Accuracy", "calibration": "Calibration (ECE)", "fgsm": "FGSM attack", "pgd": "PGD attack",
          "corruption": "Corruption robustness", "occlusion": "Occlusion robustness", "cam": "Grad-CAM"}


def render_report(results: dict) -> str:
    """report.md of one evaluation folder."""
    run = results["run"]
    lines = [f"# Evaluation of {run['name']}", "",
             f"- checkpoint: `{run['checkpoint']}` (epoch {run['epoch']}), method {run['method']}, arch {run['arch']}",
             f"- head: **{results['head']}** (model heads: {', '.join(run['heads'])}); "
             f"protocol: **{results['protocol']}**",
             f"- data: {results['data']['dataset']} val split, {results['data']['images']} images, "
             f"{results['data']['image_size']} px",
             f"- device: {results['device']}; torch {results['versions']['torch']}; "
             f"{results['seconds']:.1f} s; seed {results['seed']}", ""]
    for suite, r in results["results"].items():
        lines += [f"## {TITLES[suite]}", ""] + suite_tables(suite, r) + [""]
        for picture in results["pictures"].get(suite, []):
            lines += [f"![{suite}]({picture})", ""]
    return "\n".join(lines)


def folder_name(suites: tuple[str, ...], all_suites: tuple[str, ...], head: str, protocol: str,
                stamp: Optional[str] = None) -> str:
    """eval-<suite or all>-<head>-<protocol>[-<date-time>] (several suites joined with '+')."""
    suite = "all" if set(suites) == set(all_suites) else "+".join(suites)
    return f"eval-{suite}-{head}-{protocol}" + (f"-{stamp}" if stamp else "")
