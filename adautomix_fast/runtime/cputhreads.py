"""How many CPU threads a training or evaluation process uses: the CPUs it may run on, less the
ones other jobs keep busy.

torch starts one OpenMP thread per CPU it sees. Every parallel region (each convolution, each
elementwise op of a small network) splits its work evenly over those threads and waits for the
slowest; when another job is busy on one of the cores, the thread there is descheduled for whole
scheduler slices and every region waits for it. Measured on a 2-core machine (bench/threads.py,
docs/benchmarks.md): a digits epoch of r18 took 9x longer beside one busy process and 11x beside
another torch job with torch's two threads, 1.2x with one thread. A passive OpenMP wait policy
(``OMP_WAIT_POLICY=PASSIVE``) does not help: the time is lost waiting for the descheduled thread,
not spinning.

So the engine uses ``min(CPUs it may use, CPUs left idle by others)`` threads, at least one:

* the CPUs it may use: its affinity mask (``taskset``, SLURM's ``--cpus-per-task`` binding) and
  its cgroup's CPU quota (Docker ``--cpus``, Kubernetes limits), whichever is smaller;
* the CPUs left idle by others: the busy time of those CPUs over a short window at start-up, less
  this process's own (read from ``/proc``; elsewhere nobody else is assumed busy).

The choice is made once, when the run starts (a thread count that changed mid-run could change
the floating-point summation order, and resume is exact), printed in the run summary and logged.
``OMP_NUM_THREADS`` set by the user wins and is left alone. Hand-written (``/proc`` and the cgroup
files, about 60 lines) rather than psutil, which is not installed with torch and would still not
read cgroup quotas.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

OVERRIDE_ENV = "OMP_NUM_THREADS"


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not Linux
        return list(range(os.cpu_count() or 1))


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> Optional[float]:
    """The CPUs the cgroup's quota allows (e.g. 1.5), or None when unlimited or unknown.
    cgroup v2: ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"); v1: ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` (-1: unlimited). The process's own cgroup first, then the root."""
    paths: dict[str, list[str]] = {"v2": [], "v1": []}
    try:
        with open(proc_cgroup) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    paths["v2"].append(os.path.join(root, path.lstrip("/")))
                elif "cpu" in controllers.split(","):
                    paths["v1"].append(os.path.join(root, "cpu", path.lstrip("/")))
    except OSError:
        pass
    for folder in paths["v2"] + [root]:
        text = _read(os.path.join(folder, "cpu.max"))
        if text:
            quota, _, period = text.partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100000)
    for folder in paths["v1"] + [os.path.join(root, "cpu")]:
        quota, period = (_read(os.path.join(folder, "cpu.cfs_quota_us")),
                         _read(os.path.join(folder, "cpu.cfs_period_us")))
        if quota and period:
            return None if int(quota) < 0 else int(quota) / int(period)
    return None


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by the cgroup quota (rounded up:
    1.5 CPUs of quota run two threads at three quarters each)."""
    n = len(allowed_cpus())
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


@dataclass
class CpuSample:
    """Busy and total jiffies of the allowed CPUs, this process's CPU seconds, and the time."""
    busy: int
    total: int
    own_s: float
    wall: float


def sample(cpus: Optional[list[int]] = None) -> Optional[CpuSample]:
    """A reading of ``/proc/stat`` for ``cpus`` and of this process's CPU time; None off Linux."""
    cpus = allowed_cpus() if cpus is None else cpus
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name not in wanted:
                    continue
                values = [int(v) for v in fields[:8]]   # user nice system idle iowait irq softirq steal
                idle = values[3] + values[4]
                total += sum(values)
                busy += sum(values) - idle
    except (OSError, ValueError):
        return None
    times = os.times()
    return CpuSample(busy, total, times.user + times.system + times.children_user + times.children_system,
                     time.monotonic())


def others_busy(start: CpuSample, end: CpuSample, cpus: int) -> float:
    """CPUs kept busy by other processes between two samples: all busy time of the allowed CPUs
    less this process's own, over the window."""
    if end.total <= start.total:
        return 0.0
    fraction = (end.busy - start.busy) / (end.total - start.total)   # of all allowed CPUs
    wall = max(end.wall - start.wall, 1e-6)
    own = (end.own_s - start.own_s) / wall                           # CPUs this process used
    return max(0.0, fraction * cpus - own)


@dataclass
class ThreadChoice:
    threads: int
    reason: str


def choose_threads(start: Optional[CpuSample] = None, min_window_s: float = 0.3) -> ThreadChoice:
    """The thread count for this process and why. ``start``: a sample taken earlier (at process
    start) so that the window costs no waiting; without one, or when it is shorter than
    ``min_window_s``, this waits for the rest of the window."""
    if os.environ.get(OVERRIDE_ENV):
        return ThreadChoice(int(os.environ[OVERRIDE_ENV]) if os.environ[OVERRIDE_ENV].isdigit() else 0,
                            f"{OVERRIDE_ENV}={os.environ[OVERRIDE_ENV]} (yours)")
    cpus = allowed_cpus()
    usable = usable_cpus()
    start = start or sample(cpus)
    if start is None:
        return ThreadChoice(usable, f"{usable} usable CPUs")
    wait = min_window_s - (time.monotonic() - start.wall)
    if wait > 0:
        time.sleep(wait)
    end = sample(cpus)
    busy = others_busy(start, end, len(cpus)) if end is not None else 0.0
    idle = len(cpus) - busy
    threads = max(1, min(usable, int(math.floor(idle + 0.5))))
    where = f"{usable} usable CPUs" + (f" of {len(cpus)}" if usable < len(cpus) else "")
    if threads < usable:
        return ThreadChoice(threads, f"{where}, {busy:.1f} kept busy by other processes")
    return ThreadChoice(threads, where)


# Read when this module is first imported (with the package, before the command line is parsed),
# so that the window over which other processes' load is measured costs no waiting.
_PROCESS_START = sample()
_CHOSEN: Optional[ThreadChoice] = None


def configure() -> ThreadChoice:
    """Choose and set torch's intra-op thread count for this process (unless ``OMP_NUM_THREADS``
    is set); the command-line entry points call it once, before anything computes."""
    global _CHOSEN
    choice = choose_threads(_PROCESS_START)
    if not os.environ.get(OVERRIDE_ENV):
        torch.set_num_threads(choice.threads)
    choice.threads = torch.get_num_threads()
    _CHOSEN = choice
    return choice


def keep_for_resume(saved: Optional[int]) -> None:
    """A resumed run computes with the thread count its checkpoint was written with (CPU
    results depend on it: the summation order of reductions), capped by the CPUs usable now.
    Only where ``configure`` chose (the command line, no ``OMP_NUM_THREADS``)."""
    if _CHOSEN is None or os.environ.get(OVERRIDE_ENV) or not saved:
        return
    threads = min(int(saved), usable_cpus())
    torch.set_num_threads(threads)
    _CHOSEN.threads = threads
    _CHOSEN.reason = (f"the checkpoint's {saved}, for an exact resume" if threads == saved else
                      f"the checkpoint had {saved}, {threads} usable now: not bit for bit")


def describe() -> dict:
    """What this process computes with, for the run summary and the log: the thread count and
    why (``configure``'s reason; a library caller's own setting otherwise)."""
    if _CHOSEN is not None:
        return {"cpu_threads": torch.get_num_threads(), "cpu_threads_reason": _CHOSEN.reason}
    return {"cpu_threads": torch.get_num_threads(), "cpu_threads_reason": "set by the caller"}


__all__ = ["ThreadChoice", "allowed_cpus", "cgroup_cpu_quota", "choose_threads", "configure", "describe",
           "keep_for_resume", "sample", "usable_cpus"]
