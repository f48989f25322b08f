"""``python -m adautomix_fast.compare``: train several methods on the same data, seed and budget,
and put them side by side (the paper's Table 1 in miniature, on any data set).

    python -m adautomix_fast.compare --methods vanilla,mixup,cutmix,automix,adautomix --dataset digits
    python -m adautomix_fast.compare --methods mixup,adautomix --dataset folder --data-dir /data/flowers \\
        --arch r18 --epochs 50 --output runs --name flowers-r18

Every flag other than ``--methods``, ``--name`` and ``--output`` is a training flag, given to each
run unchanged (``python -m adautomix_fast.train --help``); each method keeps its own published
options for the data set's family (its lambda concentration, ...). Each method trains in its own
process (so its peak memory is its own), into ``<output>/<name>/runs/<method>``; a method whose
run already finished is not trained again and an interrupted one resumes, so the command can be
re-run after a stop. The folder then holds:

* ``comparison.md`` and ``comparison.csv``: per method the teacher's and the student's top-1 (last
  epoch, and the median of the last 10 epochs: the paper's statistic), the headline (the
  teacher's one-hot head where the method has a teacher), train images/s and peak memory;
* ``comparison.json``: the same, machine-readable, with the runs' folders;
* ``accuracy_curves.png``: the headline top-1 of every method per epoch;
* ``efficiency.png``: what a method costs for what it gives (the AdAutoMix paper's Fig. 9):
  headline top-1 against training time per epoch, and against peak memory, one point per method.

Stop signals (SIGTERM, SIGUSR1, Ctrl-C) are passed on to the training in progress, which stops as
it would alone (SIGTERM/SIGUSR1: a checkpoint at the batch it reached); compare then starts no
further method and exits with the training's code (143, 138, 130), so that a requeue script sees
what it would see from the training itself. The same command run again continues.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from typing import Any, Optional

import yaml

from .errors import UsageError
from .registry import METHODS
from .records import read_jsonl
from .config import check_single_folder_name
from .stopsignals import SIGNALS_FORWARDED_ENV, exit_status

LAST = "checkpoint-last.pt"


def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m adautomix_fast.compare", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False,  # --method must not pass for --methods
                                epilog="Any other flag is passed to every training run (see python -m "
                                       "adautomix_fast.train --help).")
    p.add_argument("--methods", default="vanilla,mixup,cutmix,automix,adautomix",
                   help=f"comma list of {', '.join(METHODS)} (default: vanilla,mixup,cutmix,automix,adautomix)")
    p.add_argument("--output", default="runs", help="parent folder of the comparison folder (default: runs)")
    p.add_argument("--name", help="comparison folder name (default: compare-<dataset>-<arch>-<date-time>)")
    args, train_argv = p.parse_known_args(argv)
    for flag in ("--method", "--run-name", "--resume", "--eval-only", "--export"):
        if any(a == flag or a.startswith(flag + "=") for a in train_argv):
            raise UsageError(f"{flag} is set by compare itself (one run per method); drop it")
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        raise UsageError(f"--methods: unknown {unknown or 'empty list'}; choose from {', '.join(METHODS)}")
    if len(set(args.methods)) != len(args.methods):
        raise UsageError("--methods lists a method twice")
    return args, train_argv


def _flag_value(argv: list[str], flag: str, default: str) -> str:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return default


def read_log(folder: str) -> list[dict]:
    """The run's log.jsonl records (a torn last line of a killed run dropped)."""
    return read_jsonl(os.path.join(folder, "log.jsonl"))


def run_state(folder: str) -> str:
    """"done" (every epoch trained), "partial" (a checkpoint to resume) or "new"."""
    if not os.path.exists(os.path.join(folder, LAST)):
        return "new"
    epochs = [r for r in read_log(folder) if r.get("type") == "epoch"]
    config = os.path.join(folder, "config.yaml")
    target = None
    if os.path.exists(config):
        with open(config) as f:
            target = (yaml.safe_load(f) or {}).get("epochs")
    return "done" if epochs and target is not None and epochs[-1]["epoch"] >= target else "partial"


def summarize_run(method: str, folder: str) -> dict[str, Any]:
    """The comparison row of one finished run, from its log."""
    records = read_log(folder)
    epochs = [r for r in records if r.get("type") == "epoch"]
    if not epochs:
        return {"method": method, "folder": folder, "error": "no epoch finished"}
    start = next((r for r in records if r.get("type") == "start"), {})
    last = epochs[-1]
    has_teacher = "teacher_one_top1" in last
    headline = "teacher_one" if has_teacher else "student_one"
    tail = [e[f"{headline}_top1"] for e in epochs[-10:]]
    row = {
        "method": method, "epochs": last["epoch"], "headline_head": headline,
        "headline_top1": last[f"{headline}_top1"], "headline_top1_median_last10": statistics.median(tail),
        "teacher_top1": last.get("teacher_one_top1"), "student_top1": last.get("student_one_top1"),
        "student_top5": last.get("student_one_top5"),
        "train_img_per_s": statistics.mean(e["img_per_s"] for e in epochs),
        "peak_memory_mib": max((e.get("peak_memory_mib") or 0.0) for e in epochs) or None,
        "train_time_s": sum(e.get("train_time_s", 0.0) for e in epochs),
        "train_s_per_epoch": statistics.mean(e.get("train_time_s", 0.0) for e in epochs),
        "precision": start.get("precision"), "impl": start.get("impl"), "device": start.get("device"),
        "folder": folder, "curve": [(e["epoch"], e[f"{headline}_top1"]) for e in epochs], "error": None,
    }
    return row


COLUMNS = [("method", "method", "{}"), ("headline_top1", "top-1 (headline)", "{:.2f}"),
           ("headline_top1_median_last10", "median last 10", "{:.2f}"), ("teacher_top1", "teacher top-1", "{:.2f}"),
           ("student_top1", "student top-1", "{:.2f}"), ("train_img_per_s", "train img/s", "{:.1f}"),
           ("train_s_per_epoch", "s/epoch", "{:.1f}"),
           ("peak_memory_mib", "peak MiB", "{:.0f}"), ("epochs", "epochs", "{}")]


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    body = ["| " + " | ".join(_cell(r.get(k), f) for k, _, f in COLUMNS) + " |" for r in rows if not r.get("error")]
    failed = [f"| {r['method']} | failed: {r['error']} |" + " |" * (len(COLUMNS) - 2) for r in rows if r.get("error")]
    return "\n".join([head, rule] + body + failed)


def write_outputs(folder: str, rows: list[dict], settings: dict) -> None:
    """comparison.md/.csv/.json, accuracy_curves.png and efficiency.png, each written atomically."""
    def atomic_text(name: str, text: str) -> None:
        tmp = os.path.join(folder, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(folder, name))

    md = [f"# Comparison: {', '.join(r['method'] for r in rows)}", "",
          f"Data set {settings['dataset']}, arch {settings['arch']}, training flags: "
          f"`{' '.join(settings['train_argv']) or '(defaults)'}`.", "",
          markdown_table(rows), "",
          "top-1 (headline): the teacher's one-hot head for methods with an EMA teacher (AdAutoMix, "
          "AutoMix), the classifier's head otherwise; last epoch, and the median of the last 10 epochs "
          "(the paper's statistic). Peak memory: GPU memory allocated on CUDA, the process's peak "
          "resident memory on a CPU.", ""]
    atomic_text("comparison.md", "\n".join(md))
    tmp = os.path.join(folder, ".comparison.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k, _, _ in COLUMNS] + ["headline_head", "error", "folder"],
                           extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    os.replace(tmp, os.path.join(folder, "comparison.csv"))
    atomic_text("comparison.json", json.dumps({"settings": settings, "runs": rows}, indent=1) + "\n")
    plot_curves(folder, rows)
    plot_efficiency(folder, rows)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")     # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def _save_png(fig, folder: str, name: str) -> None:
    tmp = os.path.join(folder, f".{name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, os.path.join(folder, name))


def plot_curves(folder: str, rows: list[dict]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in rows:
        if r.get("curve"):
            epochs, top1 = zip(*r["curve"])
            ax.plot(epochs, top1, marker="o" if len(epochs) < 30 else None, label=f"{r['method']} ({r['headline_head']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("headline top-1 per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_png(fig, folder, "accuracy_curves.png")
    plt.close(fig)


EFFICIENCY_AXES = (("train_s_per_epoch", "training time per epoch (s)"), ("peak_memory_mib", "peak memory (MiB)"))


def plot_efficiency(folder: str, rows: list[dict]) -> None:
    """Headline top-1 against each cost in ``EFFICIENCY_AXES``, one labelled point per method."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(EFFICIENCY_AXES), figsize=(10.0, 4.2), dpi=120, sharey=True)
    done = [r for r in rows if not r.get("error")]
    for ax, (key, label) in zip(axes, EFFICIENCY_AXES):
        for i, r in enumerate(done):
            if r.get(key) is None:
                continue
            ax.scatter(r[key], r["headline_top1"], s=36, color=f"C{i % 10}")   # one colour per method
            ax.annotate(r["method"], (r[key], r["headline_top1"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.set_xlabel(label)
        ax.margins(0.15)          # room for the labels
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%), headline head")
    fig.suptitle("accuracy against cost")
    fig.tight_layout()
    _save_png(fig, folder, "efficiency.png")
    plt.close(fig)


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class Trainings:
    """Runs one training at a time as a child process and passes compare's signals on to it.

    Without this, a signal for compare's PID alone (``kill PID``, Kubernetes, systemd) ended compare
    and left the training running as an orphan that held its run folder's lock. The child runs in a
    session of its own, so that a signal for compare's process group (a terminal's Ctrl-C,
    ``kill -- -PGID``) reaches it once, from compare: a second SIGTERM or SIGUSR1 tells a training
    to exit at once, and a second Ctrl-C could land in the middle of its clean-up. Outside the
    terminal's process group the child would no longer stop on Ctrl-Z, so compare passes Ctrl-Z
    and the continuation on to it as well.
    """

    def __init__(self):
        self.signum: Optional[int] = None    # the first signal compare received
        self.killed = False                  # a repeat made compare end the training outright
        self._child: Optional[subprocess.Popen] = None
        self._unsent: list[int] = []         # received while no child was known yet
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "Trainings":
        if threading.current_thread() is not threading.main_thread():
            return self                      # Python runs handlers in the main thread only
        for signum in FORWARDED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._forward)
        self._previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, self._suspend)
        self._previous[signal.SIGCONT] = signal.signal(signal.SIGCONT, self._resume)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _forward(self, signum, _frame) -> None:
        child = self._child
        if self.signum is not None:
            # A second signal for compare: exit at once, as a training does on its own. The
            # training ignores repeated signals (a scheduler that signals every process of the
            # job reaches it directly and through compare), so compare ends it outright; its
            # last complete checkpoint is kept.
            os.write(2, f"\n{signal.Signals(signum).name} again while stopping: ending the training now; its last "
                        "complete checkpoint is kept\n".encode())
            self.killed = True
            self._signal_group(signal.SIGKILL)
            return
        self.signum = signum
        if child is None:
            self._unsent.append(signum)
        else:
            child.send_signal(signum)        # a no-op once the child has been reaped

    def _suspend(self, _signum, _frame) -> None:
        self._signal_group(signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # SIGSTOP, not SIGTSTP: never discarded, so compare never
        # runs on while its training stays stopped; execution continues here on SIGCONT

    def _resume(self, _signum, _frame) -> None:
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, signum: int) -> None:
        child = self._child
        if child is not None and child.returncode is None:
            try:
                os.killpg(child.pid, signum)    # the training and its data workers
            except ProcessLookupError:
                pass

    def run(self, cmd: list[str]) -> Optional[int]:
        """The child's exit status, with 128 + N for a child ended by signal N (as a shell reports
        it); None, and nothing started, once a signal has asked compare to stop."""
        if self.signum is not None:
            return None
        child = subprocess.Popen(cmd, start_new_session=True, env={**os.environ, SIGNALS_FORWARDED_ENV: "1"})
        self._child = child
        while self._unsent:                  # arrived while the child was being started
            child.send_signal(self._unsent.pop(0))
        try:
            code = child.wait()
        finally:
            self._child = None
        if self.killed:   # by compare, on the user's repeat: report the request, not the kill
            return exit_status(self.signum)
        return exit_status(-code) if code < 0 else code


def run(argv: Optional[list[str]] = None) -> int:
    args, train_argv = parse_args(argv)
    dataset = _flag_value(train_argv, "--dataset", "digits")
    arch = _flag_value(train_argv, "--arch", "r18")
    if args.name is not None:
        check_single_folder_name(args.name, "--name", "--output")
    # The seconds and a random suffix: two comparisons started together get folders of their own.
    name = args.name or (f"compare-{dataset}-{arch.replace('/', '-')}-{datetime.datetime.now():%Y%m%d-%H%M%S}-"
                         f"{secrets.token_hex(3)}")
    folder = os.path.join(args.output, name)
    runs = os.path.join(folder, "runs")
    created = not os.path.exists(folder)
    os.makedirs(runs, exist_ok=True)
    rows = []
    with Trainings() as trainings:
        for i, method in enumerate(args.methods):
            where = f"{method} ({i + 1} of {len(args.methods)} methods)"
            if trainings.signum is not None:
                return _stopped(trainings.signum, None, f" before {where}")
            run_folder = os.path.join(runs, method)
            state = run_state(run_folder)
            print(f"[{i + 1}/{len(args.methods)}] {method}: "
                  + {"done": "already trained", "partial": "resuming", "new": "training"}[state], flush=True)
            if state != "done":
                cmd = [sys.executable, "-m", "adautomix_fast.train"]
                cmd += (["--resume", run_folder] if state == "partial"
                        else train_argv + ["--method", method, "--output", runs, "--run-name", method])
                code = trainings.run(cmd)
                if trainings.signum is not None:
                    return _stopped(trainings.signum, code, f" while training {where}")
                if code == 2 and not rows:
                    # A usage error (the train command printed it) would repeat for every method;
                    # the train command wrote nothing, so neither has compare.
                    if created:
                        shutil.rmtree(folder, ignore_errors=True)
                    return 2
                if code != 0:
                    rows.append({"method": method, "folder": run_folder, "error": f"training exited with {code}"})
                    continue
            rows.append(summarize_run(method, run_folder))
        if trainings.signum is not None:
            return _stopped(trainings.signum, None, "")
    settings = {"dataset": dataset, "arch": arch, "methods": args.methods, "train_argv": train_argv}
    write_outputs(folder, rows, settings)
    print()
    print(markdown_table(rows))
    print(f"\ncomparison written to {folder} (comparison.md, comparison.csv, comparison.json, accuracy_curves.png, "
          "efficiency.png)")
    return 0 if all(not r.get("error") for r in rows) else 1


def _stopped(signum: int, code: Optional[int], where: str) -> int:
    """compare's line and exit status after a signal: the training's own status where it stopped
    on it (its line, printed above, names its checkpoint), else 128 + the signal's number."""
    print(f"compare stopped by {signal.Signals(signum).name}{where}; run the same command again to continue",
          file=sys.stderr)
    return code if code else exit_status(signum)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        return run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
