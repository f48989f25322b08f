"""Shared benchmark plumbing: device and version info, timing, peak memory, results files, tables.

Results live in ``<out>/<device-slug>-<YYYYMMDD>.json`` (UTC date). A file holds the device
record and named sections; the dict sections (``cases``, ``ratios``, ``gpu_check``, ...) are
merged key by key with what the file already holds, so a step run and a kernel run of the same
day on the same device add to one file instead of overwriting each other. CPU slugs end in
``-cpu`` so that ``.gitignore`` (``bench/results/*-cpu-*.json``) keeps CPU runs out of git.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from adautomix_fast.errors import UsageError
from adautomix_fast.runtime.devices import pick_device as engine_pick_device
from adautomix_fast.step.precision import cpu_facts, cpu_native

# 2: step/kernel statistics are pytest-benchmark's (median, q1, q3, ...) instead of p10/p90.
SCHEMA = 2


# ---------------------------------------------------------------------------- device
def pick_device(name: str) -> torch.device:
    """The engine's --device rule; an impossible request exits with its one line (no traceback)."""
    try:
        return engine_pick_device(name)
    except UsageError as e:
        raise SystemExit(str(e)) from None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _driver_version() -> Optional[str]:
    # torch exposes no driver version; nvidia-smi is on every machine that has the driver.
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _triton_version() -> Optional[str]:
    try:
        import triton
        return triton.__version__
    except Exception:  # triton is optional on CPU-only installs
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    """Everything that decides what a number means: device, versions, threads."""
    facts = cpu_facts()
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "triton": _triton_version(),
        "torch_cuda_build": torch.version.cuda,   # the CUDA version torch was built with (None: CPU build)
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        # What decides CPU speed and the default precision (adautomix_fast.step.precision): ATen's CPU
        # capability ("AVX2" vs "AVX512") and whether bf16 is native.
        "cpu_capability": facts["capability"],
        "cpu_native_bf16": cpu_native(torch.bfloat16, facts)[0],
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(kind="GPU", name=torch.cuda.get_device_name(idx),
                    capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    driver=_driver_version())
    else:
        info.update(kind="CPU", name=info["cpu"], threads=torch.get_num_threads(),
                    cuda=None, driver=None)
    return info


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(info: dict[str, Any]) -> str:
    slug = slugify(info["name"])
    return f"{slug}-cpu" if info["kind"] == "CPU" and not slug.endswith("-cpu") else slug


# ---------------------------------------------------------------------------- timing
def summarize(times_ms: Sequence[float]) -> dict[str, Any]:
    """Statistics of per-call milliseconds, computed by pytest-benchmark's own ``Stats`` (the
    numbers `pytest bench/ --benchmark-only` reports): median, q1, q3, iqr, min, max, mean,
    stddev, rounds."""
    from pytest_benchmark.stats import Stats

    stats = Stats()
    for t in times_ms:
        stats.update(t)
    if not times_ms:
        return {"median": math.nan, "q1": math.nan, "q3": math.nan, "rounds": 0}
    keys = ("median", "q1", "q3", "iqr", "min", "max", "mean", "stddev", "rounds")
    return {k: getattr(stats, k) for k in keys}


def sync(device: torch.device) -> None:
    """Wait for the device (a no-op on the CPU): what every timed CUDA call must end with when it
    is timed by the host clock (pytest-benchmark)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_timed(benchmark, fn: Callable[[], Any], device: torch.device, rounds: int, warmup: int):
    """Time ``fn`` with a pytest-benchmark fixture (pedantic mode): ``warmup`` untimed calls, then
    ``rounds`` timed calls of one iteration each, the GPU synchronised after every call."""
    def call():
        out = fn()
        sync(device)
        return out

    return benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup, iterations=1)


def time_steps(step: Callable[[], Any], device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """Run ``warmup`` untimed steps, then ``steps`` timed ones; per-step ms statistics
    (``summarize``) plus ``wall_mean_ms``.

    On CUDA each step is bracketed by events and the host synchronises once at the end, so the
    step's own (sync-free) pipelining is kept (the pytest-benchmark suites synchronise after
    every call instead); ``wall_mean_ms`` is the host clock over all timed steps, a check on the
    event numbers.
    """
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
    times: list[float] = []
    t0 = time.perf_counter()
    for i in range(steps):
        if cuda:
            events[i][0].record()
            step()
            events[i][1].record()
        else:
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
    if cuda:
        torch.cuda.synchronize(device)
        times = [a.elapsed_time(b) for a, b in events]
    wall = (time.perf_counter() - t0) * 1e3 / max(steps, 1)
    return {**summarize(times), "wall_mean_ms": wall, "timed_steps": steps, "warmup_steps": warmup}


# ---------------------------------------------------------------------------- memory
def reset_memory(device: torch.device) -> None:
    """Free what earlier cases left so the next peak is this case's own (GPU only)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_memory_kind": "torch.cuda.max_memory_allocated since this case started"}
    # ru_maxrss is KiB on Linux, bytes on macOS; it never goes down, so it covers earlier cases.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return {"peak_memory_mib": mib,
            "peak_memory_kind": "process peak RSS (getrusage ru_maxrss), includes earlier cases"}


# ---------------------------------------------------------------------------- results files
def utc_date() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


def results_path(out_dir: str, info: dict[str, Any]) -> str:
    return os.path.join(out_dir, f"{device_slug(info)}-{utc_date()}.json")


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Dict sections are updated key by key (new wins per key); other values are replaced."""
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict) and key != "device":
            merged[key] = {**old[key], **value}
        else:
            merged[key] = value
    return merged


def load_results(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # absent or unreadable: start a new file rather than fail the run


def write_results(out_dir: str, info: dict[str, Any], sections: dict[str, Any],
                  path: Optional[str] = None) -> str:
    """Merge ``sections`` into the day's file for this device (atomic replace); return its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = path or results_path(out_dir, info)
    new = {"schema": SCHEMA, "device": info,
           "updated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **sections}
    data = merge_results(load_results(path), new)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- tables
def report(ratios: dict[str, Any], out_dir: str, info: dict[str, Any], sections: dict[str, Any],
           write: bool = True) -> None:
    """Print every ratio (key: value) and, unless told not to, merge ``sections`` into the
    results file; the closing lines of every benchmark CLI."""
    for key, r in ratios.items():
        value = r["value"]
        print(f"  {key}: {value:.3f}" if math.isfinite(value) else f"  {key}: {value}")
    if write:
        print(f"results: {write_results(out_dir, info, sections)}")


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, fmt)
    return str(value)


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; ``columns`` are (row key, header, float format)."""
    body = [[_cell(r.get(key), fmt) for key, _, fmt in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(r) for r in body])
