"""``python -m adautomix_fast.compare``: train several methods on the same data, seeds and budget,
and put them side by side (the paper's Table 1 in miniature, on any data set).

    python -m adautomix_fast.compare --methods vanilla,mixup,cutmix,automix,adautomix --dataset digits
    python -m adautomix_fast.compare --methods vanilla,mixup,adautomix --dataset cifar10 --data-dir cifar10-jpeg \\
        --arch resnet20 --epochs 30 --seeds 0,1 --subset 5000 --name cifar10-r20

A published table's column, wherever the GPUs are (docs/results.md):

    python -m adautomix_fast.compare --paper 1 --column cifar100-r18 --seeds 0,1,2 --launcher slurm \
        --slurm-partition gpu                  # one SLURM job array through submitit; --dry-run first
    python -m adautomix_fast.compare --paper 1 --column cifar100-r18 --seeds 0,1,2 --gpus all   # one machine
    python -m adautomix_fast.compare --collect runs/<name>   # the table of what has finished, at any time

``--paper``/``--column`` take the methods and the setting (preset, epochs) from a published column
(``published.py``, ``reproduce.py``) and add measured, published and difference to the report and
``paper.png``. ``--gpus`` trains one run per GPU at a time (``launch/local.py``); ``--launcher
slurm`` submits every run not done as a task of one job array (``launch/slurm.py``), each
checkpointing on SIGUSR1 before its time limit and requeued to resume; ``--launcher slurm-local``
runs the same jobs through submitit's local executor. ``--dry-run`` prints the runs and their
expected GPU-hours (``launch/estimate.py``). The comparison folder's ``plan.json`` holds the
command and every run's settings, ``jobs/<run>.json`` what became of each run.

Every flag other than compare's own (``--methods``, ``--seeds``, ``--subset``, ``--name``,
``--output``, the paper, launcher and collect flags above) is a training flag, given to each run
unchanged (``python -m adautomix_fast.train --help``); each method keeps its own published options
for the data set's family (its lambda concentration, ...). Each run trains in its own process (so
its peak memory is its own). Without ``--seeds`` every method trains once (with ``--seed``, default
0) into ``<output>/<name>/runs/<method>``; with ``--seeds 0,1,2`` every method trains once per seed
into ``runs/<method>-s<seed>``, seed after seed (all methods of the first seed, then the next), so
that a comparison cut short still compares every method. ``--subset N`` trains every run on the
same class-balanced N training images (``--train-subset N``: a function of the data alone, not of
the seed).

A run that already finished is not trained again and an interrupted one resumes, so the same
command continues a comparison after a stop, and adding a method or a seed trains only what is
new. A comparison folder whose runs were trained with other settings (another ``--epochs``,
``--subset``, ``--arch``, ... : anything a checkpoint could not be resumed with) is refused in one
line before anything runs. The folder then holds:

* ``comparison.md``: the protocol (data, subset, network, budget, seeds, versions, device,
  precision, the command), then per method the teacher's and the student's top-1 (last epoch, and
  the median of the last 10 epochs: the paper's statistic), the headline (the teacher's one-hot
  head where the method has a teacher), train images/s, seconds per epoch and peak memory; with
  several seeds each is the mean ± the sample standard deviation over the seeds (n - 1), and a
  second table gives every seed's values;
* ``comparison.csv``: one row per method, the same statistics (with several seeds: the mean, the
  ``_std`` and every seed's ``_s<seed>`` value);
* ``comparison.json``: the settings, the protocol, every run's row (with its folder) and every
  method's means and standard deviations (with the masks' last-epoch diagnostics where the runs
  logged them);
* ``accuracy_curves.png``: the headline top-1 of every method per epoch (the mean over the seeds,
  with the band between the lowest and the highest seed);
* ``efficiency.png``: what a method costs for what it gives (the AdAutoMix paper's Fig. 9):
  headline top-1 against training time per epoch, and against peak memory, one point per method
  (means, with the seeds' standard deviations as error bars).

Stop signals (SIGTERM, SIGUSR1, Ctrl-C) are passed on to the training in progress, which stops as
it would alone (SIGTERM/SIGUSR1: a checkpoint at the batch it reached); compare then starts no
further run and exits with the training's code (143, 138, 130), so that a requeue script sees
what it would see from the training itself. The same command run again continues.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torchvision
import yaml

from . import __version__, reproduce
from .config import check_single_folder_name
from .data import DATA_ENV
from .errors import UsageError
from .launch import estimate, jobs as joblib, local, slurm
from .launch.jobs import LAST, read_log, run_state
from .launch.slurm import LAUNCHERS
from .registry import METHODS, OPTIONS, method_options, takers
from .runtime.stopsignals import SIGNALS_FORWARDED_ENV, exit_status
from .train import build_config, get_args_parser

PROG = "python -m adautomix_fast.compare"
# The training flag that --subset sets in every run.
SUBSET_FLAG = "--train-subset"


DEFAULT_METHODS = "vanilla,mixup,cutmix,automix,adautomix"


def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                allow_abbrev=False,  # --method must not pass for --methods
                                epilog="Any other flag is passed to every training run (see python -m "
                                       "adautomix_fast.train --help).")
    p.add_argument("--methods",
                   help=f"comma list of {', '.join(METHODS)} (default: {DEFAULT_METHODS}; with --paper: the "
                        "column's methods)")
    p.add_argument("--seeds", metavar="LIST",
                   help="comma list of seeds, e.g. 0,1,2: every method trains once per seed, "
                        "into runs/<method>-s<seed>, and the report gives the mean and standard deviation "
                        "over the seeds (default: one run per method, with --seed, into runs/<method>)")
    p.add_argument("--subset", metavar="N",
                   help=f"train every run on the same class-balanced N training images (passes {SUBSET_FLAG} N; "
                        "default: the whole training set)")
    p.add_argument("--output", default="runs", help="parent folder of the comparison folder (default: runs)")
    p.add_argument("--name", help="comparison folder name (default: compare-<dataset>-<arch>-<date-time>)")
    paper = p.add_argument_group("a published table (docs/results.md)")
    paper.add_argument("--paper", metavar="TABLE",
                       help="reproduce a column of a published table: 1 (or table1), 2, 3, 11, released-cifar-cnn, "
                            "...: its methods, its setting's preset and epochs, and its numbers beside the measured")
    paper.add_argument("--column", metavar="NAME", help="the table's column, e.g. cifar100-r18 (listed when omitted)")
    where = p.add_argument_group("where the runs train")
    where.add_argument("--launcher", choices=LAUNCHERS, default="local",
                       help="local: on this machine (default); slurm: one SLURM job array through submitit; "
                            "slurm-local: the same submitit jobs run on this machine (a rehearsal)")
    where.add_argument("--gpus", metavar="LIST",
                       help="local: train one run per GPU at a time, as many at once as GPUs (e.g. 0,1,2,3 or all)")
    where.add_argument("--slurm-partition", help="the SLURM partition of the jobs")
    where.add_argument("--slurm-gpus-per-job", type=int, default=1, metavar="N",
                       help="GPUs per job (default 1; above 1 the job runs torchrun on its node)")
    where.add_argument("--slurm-time", default="1440", metavar="TIME",
                       help="each job's time limit: minutes or HH:MM:SS or D-HH:MM:SS (default 1440); a run "
                            "that needs longer checkpoints before the limit and is requeued")
    where.add_argument("--slurm-account", help="the SLURM account to charge")
    where.add_argument("--slurm-cpus-per-job", type=int, metavar="N", help="CPU cores per job")
    where.add_argument("--slurm-mem", metavar="SIZE", help="memory per job (e.g. 64G)")
    where.add_argument("--slurm-sbatch", action="append", default=[], metavar="LINE",
                       help="an extra sbatch option, e.g. --slurm-sbatch=--qos=high (repeatable)")
    where.add_argument("--slurm-setup", action="append", default=[], metavar="COMMAND",
                       help="a shell line run before each SLURM job, e.g. 'source ~/venv/bin/activate' "
                            "(repeatable; not for slurm-local)")
    where.add_argument("--slurm-signal-delay", type=int, default=120, metavar="S",
                       help="seconds before the time limit at which SLURM sends SIGUSR1 (default 120)")
    where.add_argument("--slurm-max-parallel", type=int, default=256, metavar="N",
                       help="at most N jobs of the array at once (default 256)")
    where.add_argument("--wait", action="store_true",
                       help="slurm: wait for the jobs and write the table (default: submit, print the --collect "
                            "command and exit)")
    p.add_argument("--collect", metavar="DIR",
                   help="write the table of the comparison folder DIR from the runs that have finished and list "
                        "the pending and failed ones; trains nothing")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs, their state, the expected GPU-hours (and for slurm the sbatch script); "
                        "writes nothing")
    args, train_argv = p.parse_known_args(argv)
    if args.collect is not None:
        extra = [a for a in (argv or []) if a not in ("--collect", args.collect)
                 and not a.startswith("--collect=")]
        if extra:
            raise UsageError(f"--collect DIR takes nothing else (got {shlex.join(extra)}): it reads the settings the "
                             "comparison was made with")
        return args, []
    for flag in ("--method", "--run-name", "--resume", "--eval-only", "--export"):
        if _has_flag(train_argv, flag):
            raise UsageError(f"{flag} is set by compare itself (one run per method); drop it")
    if args.methods is not None:
        args.methods = [m for m in args.methods.split(",") if m]
        unknown = [m for m in args.methods if m not in METHODS]
        if unknown or not args.methods:
            raise UsageError(f"--methods: unknown {unknown or 'empty list'}; choose from {', '.join(METHODS)}")
        if len(set(args.methods)) != len(args.methods):
            raise UsageError("--methods lists a method twice")
    if args.column is not None and args.paper is None:
        raise UsageError("--column names a column of a published table: give the table with --paper (e.g. --paper 1)")
    args.seeds = None if args.seeds is None else parse_seeds(args.seeds)
    if args.seeds is not None and _has_flag(train_argv, "--seed"):
        raise UsageError("--seed and --seeds both given: --seeds 0,1,2 trains each method once per seed; drop --seed")
    if args.subset is not None:
        args.subset = parse_subset(args.subset)
        if _has_flag(train_argv, SUBSET_FLAG):
            raise UsageError(f"--subset and {SUBSET_FLAG} both given: --subset N passes {SUBSET_FLAG} N to every "
                             f"run; drop {SUBSET_FLAG}")
    if args.gpus is not None and args.launcher != "local":
        raise UsageError(f"--gpus places runs on this machine's GPUs (--launcher local); with --launcher "
                         f"{args.launcher} give --slurm-gpus-per-job")
    slurm_flags = [a for a in (argv or []) if a.startswith("--slurm-") or a == "--wait"]
    if slurm_flags and args.launcher == "local":
        raise UsageError(f"{slurm_flags[0].split('=')[0]} applies to --launcher slurm (or slurm-local); add it")
    if args.slurm_gpus_per_job < 1 or args.slurm_max_parallel < 1 or args.slurm_signal_delay < 0:
        raise UsageError("--slurm-gpus-per-job and --slurm-max-parallel must be 1 or more, --slurm-signal-delay 0 or "
                         "more")
    return args, train_argv


def parse_seeds(text: str) -> list[int]:
    parts = text.split(",")
    if not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise UsageError(f"--seeds {text!r}: expected a comma list of non-negative whole numbers, e.g. --seeds 0,1,2")
    seeds = [int(p) for p in parts]
    if any(s >= 2 ** 63 for s in seeds):
        raise UsageError(f"--seeds {text!r}: a seed must be below 2**63")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} lists a seed twice; each seed trains every method once")
    return seeds


def parse_subset(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < 1:
        raise UsageError(f"--subset {text!r}: expected a number of training images, 1 or more (e.g. --subset 5000)")
    return int(text)


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


# ---------------------------------------------------------------------------- the runs
@dataclass
class PlannedRun:
    method: str
    seed: int                 # the seed the run trains with (--seed's, or the default, without --seeds)
    name: str                 # its folder's name in runs/
    flags: list[str]          # the training flags of a fresh start: the user's and compare's
    cfg: Any                  # the configuration those flags resolve to


def run_name(method: str, seed: Optional[int]) -> str:
    """runs/<method> for a comparison without --seeds (the layout from before there were seeds),
    runs/<method>-s<seed> with them."""
    return method if seed is None else f"{method}-s{seed}"


def plan_runs(args: argparse.Namespace, train_argv: list[str]) -> list[PlannedRun]:
    """Every (method, seed) run, seed-major, with its resolved configuration: a bad training flag
    is one line here, before any folder is made."""

    def resolve(flags: list[str]):
        return build_config(get_args_parser().parse_args(flags), None)

    extra = [SUBSET_FLAG, str(args.subset)] if args.subset is not None else []
    planned = []
    for seed in (args.seeds if args.seeds is not None else [None]):
        for method in args.methods:
            own = for_method(train_argv, method, args.methods)
            flags = own + extra + ["--method", method] + ([] if seed is None else ["--seed", str(seed)])
            cfg = resolve(flags)
            planned.append(PlannedRun(method, cfg.seed, run_name(method, seed), flags, cfg))
    return planned


def _option_of_flag(token: str):
    """The method option a training flag sets (``--beta``, ``--beta=0.5``, ``--no-lam-concat``),
    or None for an engine flag."""
    name = token.split("=", 1)[0]
    for option in OPTIONS.values():
        if name == option.flag or (option.type is bool and name == "--no-" + option.flag[2:]):
            return option
    return None


def for_method(train_argv: list[str], method: str, methods: list[str]) -> list[str]:
    """The training flags ``method`` receives: all of them but the options of other methods
    (``--beta 0.5`` goes to AdAutoMix, not to the baselines beside it); a method option that
    no compared method takes is one line."""
    own = method_options(method)
    out: list[str] = []
    skip_value = False
    for token in train_argv:
        if skip_value:
            skip_value = False
            continue
        option = _option_of_flag(token) if token.startswith("--") else None
        if option is not None and option.name not in own:
            users = takers(option.name)
            if not set(users) & set(methods):
                raise UsageError(f"{option.flag} applies to {', '.join(users)}, which --methods does not compare: "
                                 "drop the flag or add one of them")
            skip_value = option.type is not bool and "=" not in token
            continue
        out.append(token)
    return out


def check_folder(folder: str, planned: list[PlannedRun], seeds: Optional[list[int]]) -> None:
    """Refuse, in one line, a comparison folder this command would mix other runs into: runs of
    the other layout (single seed, or per seed), or a run of this comparison's name trained with
    other settings (finished, it would be reported as if trained with these; interrupted, resumed
    with its own)."""
    runs = os.path.join(folder, "runs")
    if not os.path.isdir(runs):
        return
    present = sorted(os.listdir(runs))
    methods = "|".join(re.escape(m) for m in METHODS)
    single = [d for d in present if re.fullmatch(f"({methods})", d)]
    seeded = [d for d in present if re.fullmatch(rf"({methods})-s\d+", d)]
    if seeds is not None and single:
        raise UsageError(f"{folder} holds a comparison without --seeds (runs/{single[0]}); with --seeds its runs go to "
                         "runs/<method>-s<seed> and these would not be used: give another --name, or drop --seeds")
    if seeds is None and seeded:
        raise UsageError(f"{folder} holds a comparison over seeds (runs/{seeded[0]}): give --seeds as it was made, "
                         "or another --name")
    for p in planned:
        diff = settings_difference(os.path.join(runs, p.name), p.cfg)
        if diff:
            raise UsageError(f"{os.path.join(runs, p.name)} was trained with other settings ({diff}): give the "
                             "training flags it was made with, or another --name for these settings")


RESOLVED_BY_TRAINING = ("cifar_stem", "img_size")


def settings_difference(run_folder: str, cfg) -> str:
    """The identity settings (those a checkpoint cannot be resumed with) in which the run in
    ``run_folder`` differs from ``cfg``, in words ("epochs 2, not 1"); "" when none or no run."""
    path = os.path.join(run_folder, "config.yaml")
    if not os.path.exists(path):
        return ""
    try:
        with open(path) as f:
            theirs = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        theirs = None
    if not isinstance(theirs, dict):
        return "config.yaml does not hold a run's settings"
    return identity_difference(theirs, cfg)


def identity_difference(theirs: dict, cfg) -> str:
    """The identity settings in which ``theirs`` (a run's recorded settings) differs from ``cfg``,
    in words ("epochs 2, not 1"); "" when none."""
    fields = type(cfg).__dataclass_fields__
    # A setting added after the run was made was then at its default. The stem and the image
    # size left automatic (None) are recorded as the training resolved them from the data, so any
    # value matches them.
    # Another method's options do not change what this method trains (they hold their defaults).
    own = method_options(cfg.method)
    diffs = [(k, theirs.get(k, fields[k].default), v) for k, v in _identity(cfg).items()
             if (k not in OPTIONS or k in own) and not (v is None and k in RESOLVED_BY_TRAINING)
             and theirs.get(k, fields[k].default) != v]
    words = [f"{k} {a!r}, not {b!r}" for k, a, b in diffs[:3]]
    return "; ".join(words) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def _identity(cfg) -> dict:
    """``cfg.identity()`` as JSON and YAML give it back (lists for tuples)."""
    return json.loads(json.dumps(cfg.identity(), default=str))


# Per-epoch diagnostics of the generator's masks (AdAutoMix, AutoMix), reported at the last epoch
# when the runs log them.
MASK_KEYS = ("mask_spread", "mask_lambda_gap")


def summarize_run(method: str, folder: str, seed: Optional[int] = None) -> dict[str, Any]:
    """The comparison row of one finished run, from its log."""
    records = read_log(folder)
    epochs = [r for r in records if r.get("type") == "epoch"]
    if not epochs:
        return {"method": method, "seed": seed, "folder": folder, "error": "no epoch finished"}
    starts = [r for r in records if r.get("type") == "start"]
    start = starts[0] if starts else {}
    last = epochs[-1]
    has_teacher = "teacher_one_top1" in last
    headline = "teacher_one" if has_teacher else "student_one"
    tail = [e[f"{headline}_top1"] for e in epochs[-10:]]
    row = {
        "method": method, "seed": seed, "epochs": last["epoch"], "headline_head": headline,
        "headline_top1": last[f"{headline}_top1"], "headline_top1_median_last10": statistics.median(tail),
        "teacher_top1": last.get("teacher_one_top1"), "student_top1": last.get("student_one_top1"),
        "student_top5": last.get("student_one_top5"),
        "train_img_per_s": statistics.mean(e["img_per_s"] for e in epochs),
        "peak_memory_mib": max((e.get("peak_memory_mib") or 0.0) for e in epochs) or None,
        "train_time_s": sum(e.get("train_time_s", 0.0) for e in epochs),
        "train_s_per_epoch": statistics.mean(e.get("train_time_s", 0.0) for e in epochs),
        "precision": start.get("precision"), "impl": start.get("impl"), "device": start.get("device"),
        # every invocation's (a resumed run may have run elsewhere): the protocol lists them all
        "starts": [{k: s.get(k) for k in ("time", "device", "precision", "precision_reason", "impl", "cpu_threads",
                                                  *VERSION_KEYS)}
                   for s in starts],
        "folder": folder, "curve": [(e["epoch"], e[f"{headline}_top1"]) for e in epochs], "error": None,
    }
    for key in MASK_KEYS:
        if key in last:
            row[key] = last[key]
    row.update(training_set(folder))
    return row


def training_set(folder: str) -> dict[str, Any]:
    """The training split's size and fingerprint that the run's last checkpoint records (the
    protocol shows that every run saw the same images), or nothing where it cannot be read."""
    path = os.path.join(folder, LAST)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: weights left unread
    except Exception:   # a missing or foreign file only loses this line of the protocol
        return {}
    return {"train_size": ckpt.get("train_size"), "train_fingerprint": ckpt.get("train_fingerprint")}


# ---------------------------------------------------------------------------- over seeds
# The statistics averaged over seeds: (key, column title, format); None as title: JSON and CSV only.
STATS = [("headline_top1", "top-1 (headline)", "{:.2f}"),
         ("headline_top1_median_last10", "median last 10", "{:.2f}"),
         ("teacher_top1", "teacher top-1", "{:.2f}"), ("student_top1", "student top-1", "{:.2f}"),
         ("student_top5", None, "{:.2f}"),
         ("train_img_per_s", "train img/s", "{:.1f}"), ("train_s_per_epoch", "s/epoch", "{:.1f}"),
         ("peak_memory_mib", "peak MiB", "{:.0f}"), ("train_time_s", None, "{:.1f}"),
         ("epochs", "epochs", "{:g}")] + [(k, None, "{:.4f}") for k in MASK_KEYS]
TABLE_STATS = [s for s in STATS if s[1] is not None]


def mean_std(values: list[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """The mean and the sample standard deviation (n - 1) of the values given; None for the
    deviation of fewer than two values, and for both when there are none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else None)


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per method (in the rows' order): the seeds that finished, the failed ones, and for
    every statistic of ``STATS`` that a finished run has, its mean (``key``), sample standard
    deviation (``key_std``, None with one seed) and the per-seed values (``key_values``, in the
    order of ``seeds``)."""
    out: dict[str, dict] = {}
    for r in rows:
        entry = out.setdefault(r["method"], {"method": r["method"], "seeds": [], "failed": [], "headline_head": None})
        if r.get("error"):
            entry["failed"].append({"seed": r.get("seed"), "error": r["error"]})
            continue
        entry["seeds"].append(r.get("seed"))
        entry["headline_head"] = entry["headline_head"] or r.get("headline_head")
    for entry in out.values():
        done = [r for r in rows if r["method"] == entry["method"] and not r.get("error")]
        entry["n_seeds"] = len(done)
        for key, _, _ in STATS:
            if not any(key in r for r in done):
                continue
            values = [r.get(key) for r in done]
            entry[key], entry[f"{key}_std"] = mean_std(values)
            entry[f"{key}_values"] = values
    return list(out.values())


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _mean_cell(entry: dict, key: str, fmt: str) -> str:
    if key == "epochs":   # the budget, not a measurement: a range where seeds differ
        values = [v for v in entry.get("epochs_values", []) if v is not None]
        return "-" if not values else (f"{min(values)}" if min(values) == max(values)
                                       else f"{min(values)}-{max(values)}")
    mean, std = entry.get(key), entry.get(f"{key}_std")
    if mean is None:
        return "-"
    return fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std))


COLUMNS = [("method", "method", "{}")] + [(k, h, f) for k, h, f in TABLE_STATS]


def markdown_table(rows: list[dict], seeded: bool = False) -> str:
    """One row per run (a comparison with one seed: its table; with several, ``seeded``: the per-seed one)."""
    cols = COLUMNS[:1] + ([("seed", "seed", "{}")] if seeded else []) + COLUMNS[1:]
    head = "| " + " | ".join(h for _, h, _ in cols) + " |"
    rule = "| " + " | ".join("---" for _ in cols) + " |"
    lines = [head, rule]
    for r in rows:
        if r.get("error"):
            lead = [r["method"]] + ([str(r.get("seed"))] if seeded else [])
            lines.append("| " + " | ".join(lead) + f" | failed: {r['error']} |" + " |" * (len(cols) - len(lead) - 1))
        else:
            lines.append("| " + " | ".join(_cell(r.get(k), f) for k, _, f in cols) + " |")
    return "\n".join(lines)


def mean_table(entries: list[dict]) -> str:
    """One row per method: the mean ± sample standard deviation over its seeds."""
    head = "| method | seeds | " + " | ".join(h for _, h, _ in TABLE_STATS) + " |"
    rule = "| " + " | ".join("---" for _ in range(len(TABLE_STATS) + 2)) + " |"
    lines = [head, rule]
    for e in entries:
        seeds = ", ".join(str(s) for s in e["seeds"]) or "none"
        if e["failed"]:
            seeds += f" ({', '.join(str(f['seed']) for f in e['failed'])} failed)"
        lines.append(f"| {e['method']} | {seeds} | "
                     + " | ".join(_mean_cell(e, k, f) for k, _, f in TABLE_STATS) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the protocol
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device: str) -> str:
    """A run's device ("cpu", "cuda:0") with the name of this machine's CPU or GPU."""
    if device.startswith("cuda"):
        try:
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            return f"GPU {torch.cuda.get_device_name(index)} ({device})"
        except Exception:   # no CUDA in this process: the run's own word for it
            return f"GPU ({device})"
    if device == "cpu":
        return f"CPU ({cpu_model()}, {os.cpu_count()} logical cores)"
    return device


# What the runs' start records say they ran with (runtime/provenance.py).
VERSION_KEYS = ("torch", "torchvision", "triton", "cuda", "cudnn", "driver", "git_revision")


def versions(rows: list[dict]) -> dict[str, Optional[str]]:
    """Every version the training invocations recorded (a resumed run may have run under others),
    each key's distinct values joined; torch and torchvision of this process where none did."""
    starts = [s for r in rows for s in r.get("starts", [])]
    seen = {k: ", ".join(sorted({str(s[k]) for s in starts if s.get(k)})) or None for k in VERSION_KEYS}
    seen["torch"] = seen["torch"] or str(torch.__version__)
    seen["torchvision"] = seen["torchvision"] or str(torchvision.__version__)
    return {"python": platform.python_version(), **seen, "adautomix_fast": __version__}


def _distinct(values) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def build_protocol(planned: list[PlannedRun], rows: list[dict], args: argparse.Namespace, train_argv: list[str],
                   command: str) -> dict[str, Any]:
    """What the numbers were measured on: data, subset, network, budget, seeds, versions, device,
    precision (as the runs' logs record it), dates and the command that reproduces the table."""
    cfg = planned[0].cfg
    done = [r for r in rows if not r.get("error")]
    starts = [s for r in rows for s in r.get("starts", [])]
    if cfg.dataset == "digits":
        data_dir = "bundled with scikit-learn"
    elif cfg.data_dir:
        data_dir = os.path.basename(os.path.normpath(cfg.data_dir))
    else:
        data_dir = f"${DATA_ENV}/{cfg.dataset}"
    first_start = min((s["time"] for s in starts if s.get("time")), default=None)
    return {
        "dataset": cfg.dataset, "data_dir": data_dir, "subset": args.subset,
        "train_images": _distinct(r.get("train_size") for r in done),
        "train_fingerprints": _distinct(r.get("train_fingerprint") for r in done),
        "arch": cfg.arch, "img_size": cfg.img_size, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "training_flags": shlex.join(train_argv),
        "seeds": args.seeds if args.seeds is not None else [cfg.seed],
        "versions": versions(rows),
        "devices": [describe_device(d) for d in _distinct(s.get("device") for s in starts)],
        "cpu_threads": _distinct(s.get("cpu_threads") for s in starts),
        "precision": _distinct(f"{s['precision']} ({s['precision_reason']})" if s.get("precision_reason")
                               else s.get("precision") for s in starts),
        "impl": _distinct(s.get("impl") for s in starts),
        "train_time_s": sum(r.get("train_time_s") or 0.0 for r in done), "runs": len(done),
        "first_start": (datetime.datetime.fromtimestamp(first_start).astimezone().isoformat(timespec="minutes")
                        if first_start else None),
        "written": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "command": command,
    }


def protocol_markdown(p: dict) -> list[str]:
    sizes, prints = p["train_images"], p["train_fingerprints"]
    images = (f"{sizes[0]} training images" if len(sizes) == 1 else
              f"training sets of {', '.join(map(str, sizes))} images" if sizes else "training images not recorded")
    if p["subset"] is not None:
        images = f"a class-balanced subset of {p['subset']} training images (--subset), " + (
            f"{sizes[0]} read" if len(sizes) == 1 else images)
    if len(prints) == 1:
        images += f", fingerprint {prints[0]}, the same in every run"
    elif len(prints) > 1:
        images += f"; THE RUNS SAW DIFFERENT TRAINING SETS (fingerprints {', '.join(prints)})"
    seeds = ", ".join(map(str, p["seeds"]))
    v = p["versions"]
    seconds = p["train_time_s"]
    spent = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    return [
        "## Protocol", "",
        f"- Data: {p['dataset']} ({p['data_dir']}); {images}",
        f"- Network: {p['arch']}, image size {p['img_size'] or 'of the data set'}",
        f"- Budget: {p['epochs']} epoch{'s' * (p['epochs'] != 1)} of batch size {p['batch_size']} per run; {spent} of "
        f"training in all ({p['runs']} runs, evaluation excluded)",
        f"- Training flags: `{p['training_flags'] or '(defaults)'}`",
        f"- Seeds: {seeds}" + (" (tables: the mean ± the sample standard deviation over the seeds, n - 1)"
                               if len(p["seeds"]) > 1 else ""),
        f"- Versions: Python {v['python']}, torch {v['torch']}, torchvision {v['torchvision']}"
        + "".join(f", {label} {v[k]}" for k, label in (("triton", "triton"), ("cuda", "CUDA"), ("cudnn", "cuDNN"),
                                                       ("driver", "NVIDIA driver")) if v.get(k))
        + f", adautomix_fast {v['adautomix_fast']}"
        + (f" (git {v['git_revision']})" if v.get("git_revision") else ""),
        f"- Device: {'; '.join(p['devices']) or 'not recorded'}"
        + (f"; CPU threads per run: {' or '.join(map(str, p['cpu_threads']))}" if p.get("cpu_threads") else ""),
        f"- Precision: {'; '.join(p['precision']) or 'not recorded'}; step implementation: "
        f"{', '.join(p['impl']) or 'not recorded'}",
        f"- Date: first run started {p['first_start'] or 'unknown'}, report written {p['written']}",
        f"- Command: `{p['command']}`", "",
    ]


# ---------------------------------------------------------------------------- the report
def write_outputs(folder: str, rows: list[dict], settings: dict, protocol: Optional[dict] = None,
                  paper: Optional[dict] = None, pending: Optional[list[dict]] = None) -> None:
    """comparison.md/.csv/.json, accuracy_curves.png and efficiency.png, each written atomically;
    with ``paper`` (a published column) its section, its CSV columns and paper.png; ``pending``:
    the runs not finished, listed."""
    def atomic_text(name: str, text: str) -> None:
        tmp = os.path.join(folder, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(folder, name))

    entries = aggregate(rows)
    seeds = settings.get("seeds") or []
    several = len(seeds) > 1
    md = [f"# Comparison: {', '.join(e['method'] for e in entries)}", ""]
    md += protocol_markdown(protocol) if protocol else []
    if several:
        md += ["## Mean over seeds", "", mean_table(entries), "", "## Per seed", "",
               markdown_table(rows, seeded=True), ""]
    else:
        md += [markdown_table(rows), ""]
    md += ["top-1 (headline): the teacher's one-hot head for methods with an EMA teacher (AdAutoMix, "
           "AutoMix), the classifier's head otherwise; last epoch, and the median of the last 10 epochs "
           "(the paper's statistic). Peak memory: GPU memory allocated on CUDA, the process's peak "
           "resident memory on a CPU." + (" Mean ± sample standard deviation over the seeds that finished."
                                          if several else ""), ""]
    against = None
    if paper is not None:
        against = reproduce.annotate(entries, paper["selection"])
        md += reproduce.markdown(against, paper["selection"], paper["mismatch"])
        published = {r["method"]: r for r in against}
        for e in entries:
            e["published"] = published.get(e["method"], {}).get("published")
            e["difference"] = published.get(e["method"], {}).get("difference")
    if pending:
        md += ["## Not finished", ""] + [f"- {_pending_text(x)}" for x in pending] + [""]
    atomic_text("comparison.md", "\n".join(md))
    write_csv(os.path.join(folder, "comparison.csv"), entries, rows, seeds)
    atomic_text("comparison.json", json.dumps({"settings": settings, "protocol": protocol, "runs": rows,
                                               "methods": entries, "pending": pending or [],
                                               "paper": None if paper is None else {
                                                   **paper["selection"].to_dict(), "mismatch": paper["mismatch"],
                                                   "rows": against}}, indent=1) + "\n")
    plot_curves(folder, rows)
    plot_efficiency(folder, entries)
    if paper is not None:
        reproduce.plot(folder, against, paper["selection"], _save_png, paper["mismatch"])


def write_csv(path: str, entries: list[dict], rows: list[dict], seeds: list[int]) -> None:
    """One row per method: each statistic (the mean over seeds), and with several seeds its sample
    standard deviation (``_std``) and every seed's value (``_s<seed>``)."""
    several = len(seeds) > 1
    keys = [k for k, _, _ in STATS if any(k in e for e in entries)]
    fields = ["method", "seeds", "n_seeds"]
    for k in keys:
        fields += [k] + ([f"{k}_std"] + [f"{k}_s{s}" for s in seeds] if several else [])
    if any("published" in e for e in entries):   # a published column beside (compare --paper)
        fields += ["published", "difference"]
    fields += ["headline_head", "error"] + ([] if several else ["folder"])
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for e in entries:
            out = {"method": e["method"], "seeds": " ".join(map(str, e["seeds"])), "n_seeds": e["n_seeds"],
                   "headline_head": e["headline_head"],
                   "error": "; ".join(f"seed {x['seed']}: {x['error']}" for x in e["failed"]) or None}
            for k in keys:
                out[k] = e.get(k)
                if several:
                    out[f"{k}_std"] = e.get(f"{k}_std")
                    out.update({f"{k}_s{s}": v for s, v in zip(e["seeds"], e.get(f"{k}_values", []))})
            if "published" in fields:
                out["published"], out["difference"] = e.get("published"), e.get("difference")
            if not several:
                out["folder"] = next((r["folder"] for r in rows if r["method"] == e["method"]), None)
            w.writerow(out)
    os.replace(tmp, path)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")     # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def _save_png(fig, folder: str, name: str) -> None:
    tmp = os.path.join(folder, f".{name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, os.path.join(folder, name))


def mean_curves(rows: list[dict]) -> list[dict]:
    """Per method: the epochs, the mean headline top-1 over the seeds at each epoch, and the
    lowest and highest seed there (the band)."""
    out = []
    for e in aggregate(rows):
        curves = [dict(r["curve"]) for r in rows if r["method"] == e["method"] and r.get("curve")]
        if not curves:
            continue
        epochs = sorted({ep for c in curves for ep in c})
        at = [[c[ep] for c in curves if ep in c] for ep in epochs]
        out.append({"method": e["method"], "head": e["headline_head"], "n": len(curves), "epochs": epochs,
                    "mean": [statistics.fmean(v) for v in at], "low": [min(v) for v in at],
                    "high": [max(v) for v in at]})
    return out


def plot_curves(folder: str, rows: list[dict]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    several = False
    for i, c in enumerate(mean_curves(rows)):
        color = f"C{i % 10}"
        seeds = f", mean of {c['n']} seeds" if c["n"] > 1 else ""
        ax.plot(c["epochs"], c["mean"], color=color, marker="o" if len(c["epochs"]) < 30 else None,
                label=f"{c['method']} ({c['head']}{seeds})")
        if c["n"] > 1:
            several = True
            if len(c["epochs"]) > 1:
                ax.fill_between(c["epochs"], c["low"], c["high"], color=color, alpha=0.2, linewidth=0)
            else:   # one epoch: a band of no width would not show
                ax.vlines(c["epochs"], c["low"], c["high"], color=color, alpha=0.3, linewidth=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("headline top-1 per epoch" + (" (band: lowest to highest seed)" if several else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_png(fig, folder, "accuracy_curves.png")
    plt.close(fig)


EFFICIENCY_AXES = (("train_s_per_epoch", "training time per epoch (s)"), ("peak_memory_mib", "peak memory (MiB)"))


def plot_efficiency(folder: str, entries: list[dict]) -> None:
    """Headline top-1 against each cost in ``EFFICIENCY_AXES``, one labelled point per method
    (its means over seeds, the standard deviations as error bars)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(EFFICIENCY_AXES), figsize=(10.0, 4.2), dpi=120, sharey=True)
    done = [e for e in entries if e["n_seeds"]]
    for ax, (key, label) in zip(axes, EFFICIENCY_AXES):
        for i, e in enumerate(done):
            if e.get(key) is None:
                continue
            ax.errorbar(e[key], e["headline_top1"], xerr=e.get(f"{key}_std"), yerr=e.get("headline_top1_std"),
                        fmt="o", markersize=6, capsize=3, color=f"C{i % 10}")   # one colour per method
            ax.annotate(e["method"], (e[key], e["headline_top1"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.set_xlabel(label)
        ax.margins(0.15)          # room for the labels
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%), headline head"
                       + (", mean over seeds" if any(e["n_seeds"] > 1 for e in done) else ""))
    fig.suptitle("accuracy against cost")
    fig.tight_layout()
    _save_png(fig, folder, "efficiency.png")
    plt.close(fig)


class Trainings(local.SignalScope):
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

    def handlers(self) -> dict[int, Any]:
        return {**{signum: self._forward for signum in local.FORWARDED_SIGNALS},
                signal.SIGTSTP: self._suspend, signal.SIGCONT: self._resume}

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
            child.send_signal(local.for_training(signum))   # a no-op once the child has been reaped

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
            child.send_signal(local.for_training(self._unsent.pop(0)))
        try:
            code = child.wait()
        finally:
            self._child = None
        if self.killed:   # by compare, on the user's repeat: report the request, not the kill
            return exit_status(self.signum)
        return exit_status(-code) if code < 0 else code


def run(argv: Optional[list[str]] = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args, train_argv = parse_args(given)
    if args.collect is not None:
        return collect(args.collect)
    selection, train_argv = choose_methods(args, train_argv)
    if args.name is not None:
        check_single_folder_name(args.name, "--name", "--output")
    planned = plan_runs(args, train_argv)
    cfg = planned[0].cfg
    # The seconds and a random suffix: two comparisons started together get folders of their own.
    name = args.name or (f"compare-{cfg.dataset}-{cfg.arch.replace('/', '-')}-{datetime.datetime.now():%Y%m%d-%H%M%S}-"
                         f"{secrets.token_hex(3)}")
    folder = os.path.join(args.output, name)
    check_folder(folder, planned, args.seeds)
    check_plan(folder, planned)
    mismatch = reproduce.setting_difference(selection, cfg) if selection else ""
    if selection is not None:
        print(f"{selection.label}: {', '.join(selection.methods)}"
              + (f" (not in this engine: {', '.join(selection.not_in_engine)})" if selection.not_in_engine else ""))
        if mismatch:
            print(f"note: the runs' setting is not the column's ({mismatch}); the published numbers are of another "
                  "setting")
    settings = launcher_settings(args)
    if args.dry_run:
        return dry_run(folder, planned, args, settings)
    if settings is not None:
        slurm.check_launcher(settings)
    elif args.gpus is not None:
        local.parse_gpus(args.gpus)      # "all" without a GPU: one line before the folder exists
    # With the folder's name, so that the same command continues this comparison.
    command = f"{PROG} {shlex.join(given + ([] if args.name else ['--name', name]))}"
    created = not os.path.exists(folder)
    os.makedirs(os.path.join(folder, "runs"), exist_ok=True)
    jobs = [dict(as_job(p).to_dict(), identity=_identity(p.cfg)) for p in planned]
    # runs of earlier commands on this folder (a method or seed left out this time) stay planned:
    # their settings are still checked when a later command names them again
    earlier = (joblib.read_plan(folder) or {}).get("jobs", [])
    jobs += [j for j in earlier if j.get("name") not in {p.name for p in planned}]
    joblib.write_plan(folder, {"argv": given + ([] if args.name else ["--name", name]), "command": command,
                               "cwd": os.getcwd(), "launcher": args.launcher,
                               "paper": selection.to_dict() if selection else None, "jobs": jobs})
    report = Report(folder, planned, args, train_argv, command, selection, mismatch)
    if args.launcher == "local" and args.gpus is None:
        code = train_one_after_another(folder, planned, args, created)
        if code is not None:
            return code
    elif args.launcher == "local":
        code = train_on_gpus(folder, planned, local.parse_gpus(args.gpus), report, created)
        if code is not None:
            return code
    else:
        with slurm.JobWatch() as watch:
            try:
                submitted = submit_to_slurm(folder, planned, settings, name, watch)
            except slurm.SubmissionError as e:
                if created and not any(run_state(os.path.join(folder, "runs", p.name)) != "new" for p in planned):
                    shutil.rmtree(folder, ignore_errors=True)
                raise UsageError(str(e)) from None
            if args.launcher == "slurm" and not args.wait:
                print(f"\n{len(submitted)} job{'s' * (len(submitted) != 1)} submitted"
                      + (f" (array {submitted[0][1].split('_')[0]})" if submitted else "")
                      + f"; the table of what has finished, any time: {PROG} --collect {folder}")
                return 0
            watch.wait()
        if watch.signum is not None:
            where = (" while the local jobs ran (each stopped at its batch with a checkpoint)" if settings.local
                     else f"; the jobs go on in SLURM: {PROG} --collect {folder} for their table")
            return _stopped(watch.signum, None, where)
    return report.write(final=True)


def choose_methods(args: argparse.Namespace, train_argv: list[str]) -> tuple[Optional[reproduce.Selection], list[str]]:
    """Set ``args.methods`` (a published column's, --methods, or the default) and return the
    column's selection (None without --paper) and the training flags, the column's first."""
    if args.paper is None:
        args.methods = args.methods or DEFAULT_METHODS.split(",")
        return None, train_argv
    selection = reproduce.select(args.paper, args.column, args.methods)
    args.methods = selection.methods
    return selection, selection.flags + train_argv    # the user's flags after: they win


def as_job(p: PlannedRun) -> joblib.Job:
    return joblib.Job(p.method, p.seed, p.name, list(p.flags))


def check_plan(folder: str, planned: list[PlannedRun]) -> None:
    """Refuse, in one line, runs this folder planned with other settings and has not started yet
    (a run with a config.yaml is checked by ``check_folder``)."""
    plan = joblib.read_plan(folder)
    if not plan:
        return
    before = {j["name"]: j.get("identity") for j in plan.get("jobs", [])}
    for p in planned:
        diff = identity_difference(before[p.name], p.cfg) if before.get(p.name) is not None else ""
        if diff:
            raise UsageError(f"{os.path.join(folder, 'runs', p.name)} was planned with other settings ({diff}): give "
                             "the flags it was made with, or another --name")


def launcher_settings(args: argparse.Namespace) -> Optional[slurm.SlurmSettings]:
    if args.launcher == "local":
        return None
    return slurm.SlurmSettings(
        partition=args.slurm_partition, gpus_per_job=args.slurm_gpus_per_job,
        time_min=slurm.parse_time(args.slurm_time),
        account=args.slurm_account, cpus_per_job=args.slurm_cpus_per_job, mem=args.slurm_mem,
        signal_delay_s=args.slurm_signal_delay, sbatch=dict(slurm.parse_sbatch_line(x) for x in args.slurm_sbatch),
        setup=list(args.slurm_setup), max_parallel=args.slurm_max_parallel, local=args.launcher == "slurm-local")


def _label(p: PlannedRun) -> str:
    """A run as the console names it: its method, and its seed in a comparison over seeds
    (whose runs are named <method>-s<seed>)."""
    return p.method if p.name == p.method else f"{p.method} seed {p.seed}"


def train_one_after_another(folder: str, planned: list[PlannedRun], args, created: bool) -> Optional[int]:
    """The default launcher: each run in turn in this terminal. None when every run has had its
    turn; else compare's exit status (a stop signal, or a usage error of the first run)."""
    total = len(planned)
    seeded = args.seeds is not None
    started_any = False
    with Trainings() as trainings:
        for i, p in enumerate(planned):
            label = _label(p)
            where = f"{label} ({i + 1} of {total} {'runs' if seeded else 'methods'})"
            if trainings.signum is not None:
                return _stopped(trainings.signum, None, f" before {where}")
            run_folder = os.path.join(folder, "runs", p.name)
            state = run_state(run_folder)
            print(f"[{i + 1}/{total}] {label}: "
                  + {"done": "already trained", "partial": "resuming", "new": "training"}[state], flush=True)
            if state == "done":
                continue
            joblib.update_record(folder, p.name, launcher="local", status="running", device="this process", code=None)
            code = trainings.run([*local.python_train(), *joblib.training_argv(folder, as_job(p), state)])
            joblib.update_record(folder, p.name, status=joblib.status_of(code), code=code)
            if trainings.signum is not None:
                return _stopped(trainings.signum, code, f" while training {where}")
            if code == 2 and not started_any:
                # A usage error (the train command printed it) would repeat for every run;
                # the train command wrote nothing, so neither has compare.
                if created:
                    shutil.rmtree(folder, ignore_errors=True)
                return 2
            started_any = True
        if trainings.signum is not None:
            return _stopped(trainings.signum, None, "")
    return None


def train_on_gpus(folder: str, planned: list[PlannedRun], gpus: list[str], report: "Report",
                  created: bool) -> Optional[int]:
    """--gpus: the runs not yet done, one per GPU at a time; the table rewritten as each ends.
    None when every run has had its turn; else compare's exit status (a stop signal, or a usage
    error that every run started so far met before training)."""
    tasks = []
    for p in planned:
        state = run_state(os.path.join(folder, "runs", p.name))
        if state == "done":
            print(f"{_label(p)}: already trained")
            continue
        tasks.append(local.Task(p.name, _label(p) + (" (resuming)" if state == "partial" else ""),
                                [*local.python_train(), *joblib.training_argv(folder, as_job(p), state)]))
    logs = os.path.join(folder, "logs")
    print(f"{len(tasks)} run{'s' * (len(tasks) != 1)} on GPU{'s' * (len(gpus) != 1)} {', '.join(gpus)}, one per GPU at "
          f"a time; logs in {logs}", flush=True)
    if local.visible_gpu_count() == 0:
        print("note: no CUDA GPU is visible here: each run trains on the CPU (the GPU index only pins "
              "CUDA_VISIBLE_DEVICES)", flush=True)
    codes: list[int] = []

    def started(task: local.Task) -> None:
        joblib.update_record(folder, task.name, launcher="local", status="running", device=f"cuda:{task.device}",
                             code=None)
        print(f"GPU {task.device}: {task.label} started (log: {os.path.join(logs, task.name + '.log')})", flush=True)

    def finished(task: local.Task, code: int) -> None:
        codes.append(code)
        if code == 2 and 0 not in codes:
            # Bad input (the training's one line is in its log) repeats for every run: start no more.
            scheduler.stop_starting()
        status = joblib.status_of(code)
        joblib.update_record(folder, task.name, status=status, code=code)
        print(f"GPU {task.device}: {task.label} {status}" + ("" if code == 0 else f" (exit {code})"), flush=True)
        if code == 0:
            report.write(final=False)

    with local.DeviceScheduler(gpus, logs) as scheduler:
        signum = scheduler.run(tasks, started, finished)
    if signum is not None:
        return _stopped(signum, None, " while training on the GPUs")
    if codes and set(codes) == {2}:
        print(_last_error(os.path.join(logs, f"{tasks[0].name}.log")), file=sys.stderr)
        if created:
            shutil.rmtree(folder, ignore_errors=True)   # nothing was trained: nothing of this command is kept
        return 2
    return None


def _last_error(log: str) -> str:
    """A training log's one-line error ("error: ..."), or its last line."""
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
    except OSError:
        return f"the training failed before it wrote {log}"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [f"the training wrote nothing to {log}"])[-1]


def submit_to_slurm(folder: str, planned: list[PlannedRun], settings: slurm.SlurmSettings,
                    name: str, watch: "slurm.JobWatch") -> list[tuple[PlannedRun, str, Any]]:
    """Submit the runs not done and not queued as one job array; [(run, job id, submitit job)].
    The local executor's jobs, at most --slurm-max-parallel at once, until a signal stops it."""
    todo = []
    for p in planned:
        out = joblib.outcome(folder, as_job(p))
        if out["state"] == "done":
            print(f"{_label(p)}: already trained")
            continue
        pid = joblib.running_here(joblib.read_record(folder, p.name))
        if pid is not None:
            print(f"{_label(p)}: still training on this machine (process {pid}); not started again")
            continue
        if out["job_id"] and not settings.local and out["status"] in ("submitted", "running"):
            # Submitted before and not ended by its own hand: queued or running, unless SLURM says otherwise.
            state = slurm.job_state(folder, out["job_id"])
            if state is None or state in slurm.ACTIVE_STATES:
                known = state or "submitted (SLURM cannot say more here)"
                print(f"{_label(p)}: job {out['job_id']} is {known}; not submitted again (scancel it and "
                      f"delete jobs/{p.name}.json to submit it anew)")
                continue
        todo.append(p)
    if not todo:
        return []
    executor = slurm.make_executor(folder, settings, name)
    out = []

    def submitted(p: PlannedRun, job) -> None:
        watch.jobs.append(job)
        record = joblib.read_record(folder, p.name)
        # a task that started at once may have written its own status already
        begun = record.get("job_id") == str(job.job_id) and record.get("status") != "submitted"
        joblib.update_record(folder, p.name, launcher="slurm-local" if settings.local else "slurm",
                             job_id=str(job.job_id), **({} if begun else {"status": "submitted", "code": None}))
        print(f"{_label(p)}: job {job.job_id}"
              + (" (resumes its checkpoint)" if run_state(os.path.join(folder, "runs", p.name)) == "partial" else ""),
              flush=True)
        out.append((p, str(job.job_id), job))

    if settings.local:
        # The local executor starts every job it is given at once: at most --slurm-max-parallel.
        for p in todo:
            while sum(not job.done() for _, _, job in out) >= settings.max_parallel and watch.signum is None:
                time.sleep(0.5)
            if watch.signum is not None:
                break
            submitted(p, executor.submit(slurm.TrainingJob(folder, as_job(p), settings.gpus_per_job)))
        return out
    try:
        with executor.batch():
            jobs = [(p, executor.submit(slurm.TrainingJob(folder, as_job(p), settings.gpus_per_job))) for p in todo]
    except Exception as e:     # sbatch's refusal (a bad partition, account, ...), raised by submitit
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        raise slurm.SubmissionError(f"sbatch refused the job array: {lines[-1] if lines else type(e).__name__}; "
                                    "check the --slurm-* flags") from None
    for p, job in jobs:
        submitted(p, job)
    return out


def dry_run(folder: str, planned: list[PlannedRun], args, settings: Optional[slurm.SlurmSettings]) -> int:
    """The runs, their state, the expected GPU-hours, and for slurm the job array's script."""
    estimator = estimate.Estimator()
    states = {p.name: run_state(os.path.join(folder, "runs", p.name)) for p in planned}
    # a method's time per step as measured by any of its runs in this folder
    measured: dict[str, Optional[float]] = {}
    for p in planned:
        run = os.path.join(folder, "runs", p.name)
        measured[p.method] = measured.get(p.method) or estimate.measured_s_per_step(run)
    estimates = {p.name: estimator.estimate(p.cfg, args.subset, measured[p.method]) for p in planned}
    todo = [p for p in planned if states[p.name] != "done"]
    lines = ["| run | state | steps | s/step | GPU-hours | estimate from |", "| --- | --- | --- | --- | --- | --- |"]
    for p in planned:
        e = estimates[p.name]    # GPU-hours: the same on one GPU or spread over several
        steps = "unknown" if e["steps"] is None else str(e["steps"])
        per_step = "-" if e["s_per_step"] is None else f"{e['s_per_step']:.3f}"
        lines.append(f"| {_label(p)} | {states[p.name]} | {steps} | {per_step} | "
                     f"{estimate.format_hours(e['hours'])} | {e['source']} |")
    print(f"comparison folder: {folder}")
    print("\n".join(lines))
    costs = {p.method: f"{p.method} {estimates[p.name]['cost']:.2f}x ({estimates[p.name]['cost_source']})"
             for p in planned}
    print("\n" + estimate.SCALED_TEXT + " Method step costs: " + "; ".join(costs.values()) + ".")
    hours = [estimates[p.name]["hours"] for p in todo]
    total = sum(h for h in hours if h is not None)
    gpus = len(local.parse_gpus(args.gpus)) if args.gpus else 0
    print(f"\n{len(todo)} of {len(planned)} runs to train; expected {estimate.format_hours(total)} GPU-hours"
          + (" (plus the runs of unknown cost)" if None in hours else "")
          + (f", about {estimate.format_hours(total / gpus)} hours on {gpus} GPUs" if gpus else ""))
    if settings is not None:
        # wall-clock hours of the longest job, its GPUs in step
        longest = max((h or 0.0 for h in hours), default=0.0) / settings.gpus_per_job
        if longest * 60 > settings.time_min:
            print(f"the longest run needs about {longest:.1f} h, more than --slurm-time ({settings.time_min} min): "
                  f"it checkpoints before each limit and is requeued about {int(longest * 60 // settings.time_min)} "
                  "times (each requeue resumes at the batch it reached)")
        if not settings.local and todo:
            print("\nthe job array's sbatch script:\n")
            print(slurm.sbatch_script(os.path.abspath(folder), settings, os.path.basename(folder), len(todo)))
    print("nothing was written (--dry-run)")
    return 0


class Report:
    """The comparison's table from its run folders: every finished run summarised, the failed ones
    listed with their exit status, the pending ones (not started, or interrupted) named."""

    def __init__(self, folder: str, planned: list[PlannedRun], args, train_argv: list[str], command: str,
                 selection: Optional[reproduce.Selection], mismatch: str):
        self.folder, self.planned, self.args, self.train_argv = folder, planned, args, train_argv
        self.command, self.selection, self.mismatch = command, selection, mismatch

    def rows_and_pending(self) -> tuple[list[dict], list[dict]]:
        rows, pending = [], []
        for p in self.planned:
            out = joblib.outcome(self.folder, as_job(p))
            run_folder = os.path.join(self.folder, "runs", p.name)
            if out["state"] == "done":
                rows.append(summarize_run(p.method, run_folder, p.seed))
            elif out["failed"]:
                rows.append({"method": p.method, "seed": p.seed, "folder": run_folder,
                             "error": f"training exited with {out['code']}"})
            else:
                pending.append(out)
        return rows, pending

    def write(self, final: bool) -> int:
        rows, pending = self.rows_and_pending()
        args = self.args
        cfg = self.planned[0].cfg
        seeds = args.seeds if args.seeds is not None else [cfg.seed]
        settings = {"dataset": cfg.dataset, "arch": cfg.arch, "methods": args.methods, "seeds": seeds,
                    "subset": args.subset, "train_argv": self.train_argv, "launcher": args.launcher}
        protocol = build_protocol(self.planned, rows, args, self.train_argv, self.command)
        paper = None
        if self.selection is not None:
            paper = {"selection": self.selection, "mismatch": self.mismatch}
        if rows:
            write_outputs(self.folder, rows, settings, protocol, paper=paper, pending=pending)
        if final:
            print()
            if rows:
                print(mean_table(aggregate(rows)) if len(seeds) > 1 else markdown_table(rows))
            if self.selection is not None and rows:
                for line in reproduce.markdown(reproduce.annotate(aggregate(rows), self.selection), self.selection,
                                               self.mismatch)[2:]:
                    print(line)
            if pending:
                print("not finished: " + "; ".join(_pending_text(x) for x in pending))
            if rows:
                print(f"\ncomparison written to {self.folder} (comparison.md, comparison.csv, comparison.json, "
                      "accuracy_curves.png, efficiency.png" + (", paper.png" if self.selection else "") + ")")
            else:
                print(f"no run has finished yet in {self.folder}")
        return 0 if all(not r.get("error") for r in rows) else 1


def _pending_text(x: dict) -> str:
    what = {"new": "not started", "partial": "interrupted, resumes from its checkpoint"}[x["state"]]
    job = f", job {x['job_id']}" if x.get("job_id") else ""
    return f"{x['name']} ({what}{job})"


def collect(folder: str) -> int:
    """--collect DIR: the table from what has finished, the pending and failed runs listed."""
    plan = joblib.read_plan(folder)
    if plan is None:
        raise UsageError(f"--collect {folder}: not a comparison folder (no {joblib.PLAN}); give the folder compare "
                         "printed (<output>/<name>)")
    folder = os.path.abspath(folder)
    here = os.getcwd()
    try:
        # the command's relative paths (--config, --data-dir) are of the folder it ran in
        if plan.get("cwd") and os.path.isdir(plan["cwd"]):
            os.chdir(plan["cwd"])
        args, train_argv = parse_args(plan["argv"])
        selection, train_argv = choose_methods(args, train_argv)
        planned = plan_runs(args, train_argv)
    finally:
        os.chdir(here)
    mismatch = reproduce.setting_difference(selection, planned[0].cfg) if selection else ""
    # the folder as given now (it may have moved since it was made)
    return Report(folder, planned, args, train_argv, plan["command"], selection, mismatch).write(final=True)


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
