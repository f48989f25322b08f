"""A digits epoch alone and beside a busy co-tenant, for several CPU thread settings.

    python -m bench.threads                      # r18 on digits, the engine's default precision
    python -m bench.threads --arch tiny --precision fp32 --cotenant spin,torch

On a machine shared with other CPU jobs, OpenMP threads that spin-wait for each other at every
parallel region lose their core to the co-tenant and the whole team waits for the one that was
descheduled: a 2-core machine with one busy neighbour trained a digits epoch 45x slower than
alone. This measures, per setting of the environment (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``,
or none: the engine's own choice), the second epoch's training time of
``python -m adautomix_fast.train --dataset digits`` alone and beside each co-tenant:

* ``spin``: one process busy on one core (a pure Python loop: a single-threaded job);
* ``torch``: another torch process multiplying matrices with its default threads (another
  training job).

Each training runs in a process of its own (the thread pool and the wait policy are fixed when
OpenMP starts), and the co-tenant runs for exactly as long as it. Nothing else may run on the
machine meanwhile: the numbers are only meaningful on an otherwise idle machine. The results go
to ``<out>/threads-<cpu>-<date>.json`` and a table on stdout (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

from bench.common import cpu_model, slugify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> environment additions; "engine" adds nothing (the engine's own choice).
SETTINGS = {
    "engine": {},
    "omp1": {"OMP_NUM_THREADS": "1"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "omp2": {"OMP_NUM_THREADS": "2"},
}

COTENANTS = {
    "none": None,
    "spin": [sys.executable, "-c", "while True: pass"],
    "torch": [sys.executable, "-c", "import torch\nx = torch.randn(512, 512)\nwhile True: x = (x @ x).tanh()"],
}


def train_epoch_seconds(arch: str, precision: str, env_extra: dict, epochs: int, timeout: float) -> dict:
    """The last epoch's training seconds (and images/s) of a digits run in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as out:
        cmd = [sys.executable, "-m", "adautomix_fast.train", "--dataset", "digits", "--arch", arch,
               "--epochs", str(epochs), "-j", "0", "--vis-every", "0", "--output", out, "--run-name", "r"]
        if precision == "fp32":
            cmd.append("--no-amp")
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        env.update(env_extra)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"over {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
        with open(os.path.join(out, "r", "log.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    epoch = [r for r in records if r.get("type") == "epoch"][-1]
    start = next(r for r in records if r.get("type") == "start")
    return {"epoch_s": epoch["train_time_s"], "img_per_s": epoch["img_per_s"], "wall_s": wall,
            "precision": start.get("precision"), "threads": start.get("cpu_threads"),
            "threads_reason": start.get("cpu_threads_reason")}


def run(settings: list[str], cotenants: list[str], arch: str, precision: str, epochs: int, repeats: int,
        timeout: float) -> list[dict]:
    rows = []
    for cotenant in cotenants:
        for setting in settings:
            for repeat in range(repeats):
                neighbour: Optional[subprocess.Popen] = None
                if COTENANTS[cotenant] is not None:
                    neighbour = subprocess.Popen(COTENANTS[cotenant], stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)
                    time.sleep(1.0)   # busy before the training starts
                try:
                    result = train_epoch_seconds(arch, precision, SETTINGS[setting], epochs, timeout)
                finally:
                    if neighbour is not None:
                        neighbour.kill()
                        neighbour.wait()
                row = {"cotenant": cotenant, "setting": setting, "repeat": repeat, **result}
                rows.append(row)
                shown = f"{row['epoch_s']:.2f} s/epoch" if "epoch_s" in row else row["error"]
                print(f"{cotenant:>6} {setting:>8} #{repeat}: {shown}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Median epoch seconds per (setting, co-tenant), and each co-tenant's slowdown over alone."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    cotenants = list(dict.fromkeys(r["cotenant"] for r in rows))
    med = {}
    for s in settings:
        for c in cotenants:
            values = [r["epoch_s"] for r in rows if r["setting"] == s and r["cotenant"] == c and "epoch_s" in r]
            med[s, c] = statistics.median(values) if values else None
    head = "| setting | " + " | ".join(f"{c} (s/epoch)" for c in cotenants) + " | " + \
        " | ".join(f"{c} / none" for c in cotenants if c != "none") + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(cotenants) - ("none" in cotenants))]
    for s in settings:
        cells = [f"{med[s, c]:.2f}" if med[s, c] is not None else "-" for c in cotenants]
        ratios = [f"{med[s, c] / med[s, 'none']:.1f}x" if med.get((s, "none")) and med[s, c] else "-"
                  for c in cotenants if c != "none"]
        lines.append(f"| {s} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="engine,omp1,passive,omp2",
                   help=f"comma list of {', '.join(SETTINGS)} (default: engine,omp1,passive,omp2)")
    p.add_argument("--cotenant", default="none,spin", help=f"comma list of {', '.join(COTENANTS)} (default: none,spin)")
    p.add_argument("--arch", default="r18", help="architecture (default: r18, the bundled demo's)")
    p.add_argument("--precision", choices=["auto", "fp32"], default="auto",
                   help="auto: the engine's choice (bf16 where native), fp32: --no-amp (default: auto)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is timed (default: 2)")
    p.add_argument("--repeats", type=int, default=1, help="runs per cell (default: 1)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run before it counts as failed")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="results folder")
    args = p.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    cotenants = [c for c in args.cotenant.split(",") if c]
    unknown = [s for s in settings if s not in SETTINGS] + [c for c in cotenants if c not in COTENANTS]
    if unknown:
        print(f"error: unknown setting or co-tenant {unknown}", file=sys.stderr)
        return 2
    rows = run(settings, cotenants, args.arch, args.precision, args.epochs, args.repeats, args.timeout)
    text = table(rows)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"threads-{slugify(cpu_model())}-cpu-{time.strftime('%Y%m%d', time.gmtime())}.json")
    with open(path, "w") as f:
        json.dump({"cpu": cpu_model(), "cpu_count": os.cpu_count(), "arch": args.arch, "precision": args.precision,
                   "epochs": args.epochs, "rows": rows, "table": text}, f, indent=1)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
