"""The one-command GPU check (docs/benchmarks.md, The GPU check): ``make gpu-check`` runs this.

    python -m bench.gpu_check --out DIR [--quick]

On a CUDA machine, in order, within one time budget (under 8 minutes on one H100):
  1. build: does ``adautomix_fast._C`` import (``make gpu-check`` has just built it)?
  2. tests: ``pytest -m gpu tests -q`` in a subprocess; pass/fail counts;
  3. step benchmark at GPU sizes, every impl, the CIFAR then the ImageNet shape
     (``bench.step --amp --channels-last``);
  4. kernel benchmarks: every ``bench/kernels*.py`` and every module in ``EXTRA_BENCHMARKS``,
     run as ``python -m bench.<name> --out DIR [--quick]`` (they write through bench.common);
  5. the step benchmark of the ConvNeXt (CIFAR) and Swin-T shapes, AdAutoMix beside vanilla,
     and of timm's ResNet-50 (the generic backbone path) beside the hand-wired r50;
  6. the step benchmark in fp32 for the CIFAR shape, unless --quick or the budget is spent.
Then a summary table, and the results JSON in --out and in bench/results.

Without CUDA (or with --dry-run) it is a dry run: it says what it would run and that the GPU
parts are SKIPPED, runs a small CPU smoke of bench.step unless --no-smoke, writes a JSON with
``"gpu": false`` and the skips, and exits 0.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import re
import subprocess
import sys
import time
from typing import Any, Optional

if __package__ in (None, ""):  # `python bench/gpu_check.py` as well as -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from bench import common
from bench.step import COLUMNS, table_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_RESULTS = os.path.join(ROOT, "bench", "results")

# Seconds. 8 minutes is the check's limit on one H100 (docs/benchmarks.md); the rest is margin
# for machine start-up work outside this script (the editable install of `make gpu-check`).
BUDGET_S = 450
TESTS_CAP_S = 240
# Benchmark modules beyond the bench/kernels*.py glob. data: DALI (mixed GPU decoder) vs torchvision.
EXTRA_BENCHMARKS: list[str] = ["data"]


def kernel_benchmarks() -> list[str]:
    found = sorted(os.path.splitext(os.path.basename(p))[0]
                   for p in glob.glob(os.path.join(ROOT, "bench", "kernels*.py")))
    return found + [m for m in EXTRA_BENCHMARKS if m not in found]


def build_check() -> dict[str, Any]:
    try:
        mod = importlib.import_module("adautomix_fast._C")
        return {"status": "built", "path": getattr(mod, "__file__", None)}
    except ImportError as exc:  # the extension may not exist yet: report and go on
        return {"status": "not built", "detail": str(exc).splitlines()[0] if str(exc) else ""}


def run_module(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python <argv>`` from the repo root, echoing its output; never raises."""
    cmd = [sys.executable] + argv
    print(f"$ {' '.join(cmd)}   (timeout {timeout:.0f} s)", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rc = "timeout"
    print(out, flush=True)
    return {"cmd": " ".join(argv), "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "tail": out[-2000:]}


def parse_pytest(output: str) -> dict[str, int]:
    """Counts from pytest's summary line ("3 passed, 1 skipped, 2 deselected in 4.2s")."""
    counts: dict[str, int] = {}
    summary = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)]
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)",
                              summary[-1] if summary else ""):
        counts["errors" if word.startswith("error") else word] = int(n)
    return counts


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=REPO_RESULTS, help="folder of the results JSON (default: bench/results)")
    p.add_argument("--quick", action="store_true", help="fewer warm-up steps, no fp32 pass (default: off)")
    p.add_argument("--dry-run", action="store_true", help="plan and CPU smoke only, even with a GPU (default: off)")
    p.add_argument("--no-smoke", action="store_true",
                   help="dry run without the CPU smoke of bench.step (default: smoke)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole check (default: {BUDGET_S})")
    return p.parse_args(argv)


def plan(args: argparse.Namespace, out: str) -> list[tuple[str, list[str]]]:
    """(name, python argv) of every GPU part, in order."""
    warm = ["--warmup", "3"] if args.quick else []
    # Every impl side by side (the targets are the fused/reference and fused/vanilla_compiled ratios),
    # one shape per part so that the CIFAR numbers exist even if the ImageNet part runs out of time.
    impls = ["--impls", "vanilla,vanilla_compiled,reference,fused,fused_separate"]
    steps = [(f"step bench {shape} amp bf16 channels-last",
              ["-m", "bench.step", "--device", "cuda", "--shapes", shape, "--amp", "--channels-last",
               "--out", out] + impls + warm) for shape in ("cifar", "imagenet")]
    # The baselines' and AutoMix's fused steps beside vanilla (targets: a baseline <= 1.1x vanilla
    # compiled, AutoMix < AdAutoMix), on the CIFAR shape after both AdAutoMix parts.
    steps.append(("step bench cifar methods", ["-m", "bench.step", "--device", "cuda", "--shapes", "cifar", "--amp",
                                               "--channels-last", "--out", out, "--impls",
                                               "vanilla_compiled,fused,fused_mixup,fused_cutmix,fused_automix"] + warm))
    kernels = [(f"kernel bench {m}", ["-m", f"bench.{m}", "--out", out] + (["--quick"] if args.quick else []))
               for m in kernel_benchmarks()]
    # fp32 for the CIFAR shape only: the ImageNet reference step at batch 256 in fp32 keeps three
    # ResNet-50 graphs alive and is not expected to fit an 80 GB card.
    fp32 = [] if args.quick else [("step bench fp32 cifar", ["-m", "bench.step", "--device", "cuda",
                                                             "--shapes", "cifar", "--out", out])]
    # The transformer and ConvNeXt shapes with their AdamW recipes, after the kernels: the first
    # parts the time budget drops (compiling Swin-T's fused step takes minutes).
    archs = [("step bench convnext-cifar,swin amp bf16 channels-last",
              ["-m", "bench.step", "--device", "cuda", "--shapes", "convnext-cifar,swin", "--amp", "--channels-last",
               "--out", out, "--impls", "vanilla,vanilla_compiled,reference,fused"] + warm)]
    # The generic backbone path: timm's ResNet-50 beside the hand-wired r50, one process (target:
    # the same fused step time within noise).
    generic = [("step bench imagenet,imagenet-timm fused amp bf16 channels-last",
                ["-m", "bench.step", "--device", "cuda", "--shapes", "imagenet,imagenet-timm", "--amp",
                 "--channels-last", "--out", out, "--impls", "vanilla_compiled,fused"] + warm)]
    return ([("gpu tests", ["-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider"])] + steps + kernels
            + archs + generic + fp32)


def summary_table(parts: list[dict[str, Any]]) -> str:
    return common.format_table(parts, [("name", "part", ""), ("status", "status", ""),
                                       ("seconds", "s", ".1f"), ("detail", "detail", "")])


def dry_run(args: argparse.Namespace, reason: str) -> int:
    t0 = time.perf_counter()
    info = common.device_info(torch.device("cpu"))
    print(f"gpu_check: DRY RUN - {reason}")
    build = build_check()
    parts = [{"name": "build (adautomix_fast._C)", "status": build["status"], "detail": build.get("detail", "")}]
    skipped = []
    for name, argv in plan(args, args.out):
        print(f"  would run: python {' '.join(argv)}   -> SKIPPED ({reason})")
        skipped.append({"name": name, "cmd": "python " + " ".join(argv), "reason": reason})
        parts.append({"name": name, "status": "SKIPPED", "detail": reason})
    smoke = None
    if not args.no_smoke:
        smoke = run_module(["-m", "bench.step", "--device", "cpu", "--shapes", "cifar", "--steps", "2",
                            "--warmup", "1", "--batch-size", "8", "--out", args.out], timeout=300)
        parts.append({"name": "CPU smoke of bench.step", "status": "ok" if smoke["rc"] == 0 else f"rc {smoke['rc']}",
                      "seconds": smoke["seconds"], "detail": "cifar shape, batch 8, 2 steps"})
    print()
    print(summary_table(parts))
    section = {"gpu": False, "dry_run": True, "reason": reason, "build": build, "skipped": skipped,
               "smoke": smoke, "parts": parts, "seconds": round(time.perf_counter() - t0, 1)}
    path = common.write_results(args.out, info, {"gpu_check": section})
    print(f"results: {path}")
    return 0


def gpu_run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    info = common.device_info(torch.device("cuda"))
    print(f"gpu_check on {info['name']} (torch {info['torch']}, triton {info['triton']}, cuda {info['cuda']}, "
          f"driver {info['driver']}); budget {args.budget:.0f} s", flush=True)
    build = build_check()
    print(f"build: adautomix_fast._C {build['status']} {build.get('detail', '')}", flush=True)
    parts: list[dict[str, Any]] = [{"name": "build (adautomix_fast._C)", "status": build["status"],
                                    "detail": build.get("detail", "")}]
    runs, skipped, ok = [], [], True
    for name, argv in plan(args, args.out):
        left = deadline - time.perf_counter()
        if left < (60 if "fp32" in name else 20):  # the optional fp32 pass only with room to finish
            skipped.append({"name": name, "reason": f"time budget ({left:.0f} s left)"})
            parts.append({"name": name, "status": "SKIPPED", "detail": "time budget"})
            continue
        r = run_module(argv, timeout=min(left, TESTS_CAP_S) if name == "gpu tests" else left)
        r["name"] = name
        detail = ""
        if name == "gpu tests":
            r["counts"] = parse_pytest(r["tail"])
            detail = ", ".join(f"{v} {k}" for k, v in r["counts"].items())
            # rc 5: no GPU-marked tests collected yet, not a failure
            status = "ok" if r["rc"] in (0, 5) else f"FAIL (rc {r['rc']})"
        else:
            status = "ok" if r["rc"] == 0 else f"FAIL (rc {r['rc']})"
        ok &= status == "ok"
        runs.append(r)
        parts.append({"name": name, "status": status, "seconds": r["seconds"], "detail": detail})

    path = common.results_path(args.out, info)
    data = common.load_results(path)
    print()
    if data.get("cases"):
        print(common.format_table(table_rows(data["cases"], data.get("ratios", {})), COLUMNS))
        print()
    print(summary_table(parts))
    section = {"gpu": True, "dry_run": False, "ok": ok, "quick": args.quick, "build": build, "runs": runs,
               "skipped": skipped, "parts": parts, "seconds": round(time.perf_counter() - t0, 1)}
    path = common.write_results(args.out, info, {"gpu_check": section})
    print(f"results: {path}")
    if os.path.abspath(args.out) != os.path.abspath(REPO_RESULTS):
        sections = {k: v for k, v in common.load_results(path).items()
                    if k not in ("schema", "device", "updated_utc")}
        copy = common.write_results(REPO_RESULTS, info, sections)
        print(f"results: {copy}")
    print(f"gpu_check {'OK' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args, "--dry-run given")
    if not torch.cuda.is_available():
        return dry_run(args, "torch.cuda.is_available() is False")
    return gpu_run(args)


if __name__ == "__main__":
    sys.exit(main())
