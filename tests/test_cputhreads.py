"""The engine's CPU thread count: the CPUs a process may use (affinity, cgroup quota) less those
other processes keep busy, chosen once at start, kept on resume, overridden by OMP_NUM_THREADS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from adautomix_fast.runtime import cputhreads
from adautomix_fast.runtime.cputhreads import CpuSample, others_busy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_others_busy_subtracts_this_processs_own_time():
    # 2 CPUs over 1 s: 150 of 200 jiffies busy, 0.5 CPU-s of it this process's: 1.0 CPU others'.
    start, end = CpuSample(0, 0, 0.0, 0.0), CpuSample(150, 200, 0.5, 1.0)
    assert others_busy(start, end, cpus=2) == pytest.approx(1.0)
    assert others_busy(start, CpuSample(20, 200, 0.2, 1.0), cpus=2) == 0.0   # never below zero


@pytest.mark.parametrize("busy, usable, expected", [(0.05, 2, 2), (1.0, 2, 1), (2.0, 2, 1), (0.4, 2, 2),
                                                     (0.6, 2, 1), (3.0, 8, 5), (0.0, 1, 1)])
def test_the_choice_is_the_idle_cpus_within_the_usable_ones(monkeypatch, busy, usable, expected):
    cpus = list(range(max(usable, 2)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cputhreads, "allowed_cpus", lambda: cpus)
    monkeypatch.setattr(cputhreads, "usable_cpus", lambda: usable)
    total = 100 * len(cpus)
    monkeypatch.setattr(cputhreads, "sample", lambda c=None: CpuSample(int(busy * 100), total, 0.0, 1.0))
    choice = cputhreads.choose_threads(CpuSample(0, 0, 0.0, 0.0))
    assert choice.threads == expected
    assert ("kept busy by other processes" in choice.reason) == (expected < usable)


def test_omp_num_threads_is_the_users_and_left_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cputhreads.choose_threads().reason == "OMP_NUM_THREADS=3 (yours)"


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000"}, 1.5),                  # cgroup v2, 1.5 CPUs
    ({"cpu.max": "max 100000"}, None),                    # v2 unlimited
    ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),   # v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),     # v1 unlimited
    ({}, None),
])
def test_the_cgroup_quota_is_read_from_v1_and_v2_files(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n" if "cpu.max" in files else "3:cpu,cpuacct:/\n")
    assert cputhreads.cgroup_cpu_quota(str(tmp_path), str(proc)) == expected


def test_the_quota_caps_the_usable_cpus(monkeypatch):
    monkeypatch.setattr(cputhreads, "allowed_cpus", lambda: list(range(8)))
    monkeypatch.setattr(cputhreads, "cgroup_cpu_quota", lambda: 1.5)
    assert cputhreads.usable_cpus() == 2
    monkeypatch.setattr(cputhreads, "cgroup_cpu_quota", lambda: None)
    assert cputhreads.usable_cpus() == 8


CHOOSE = """
import os, sys
os.environ.pop("OMP_NUM_THREADS", None)
from adautomix_fast.runtime import cputhreads
choice = cputhreads.configure()
import torch
print(choice.threads, torch.get_num_threads(), choice.reason, sep="|")
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs 2 CPUs and taskset")
def test_a_process_bound_to_one_cpu_uses_one_thread():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", CHOOSE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    threads, torch_threads, reason = out.stdout.strip().split("|")
    assert threads == torch_threads == "1" and reason.startswith("1 usable CPUs"), out.stdout


def test_a_resume_keeps_the_checkpoints_thread_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(cputhreads, "_CHOSEN", cputhreads.ThreadChoice(before, "test"))
    monkeypatch.setattr(cputhreads, "usable_cpus", lambda: 4)
    try:
        cputhreads.keep_for_resume(1)
        assert torch.get_num_threads() == 1 and "for an exact resume" in cputhreads.describe()["cpu_threads_reason"]
    finally:
        torch.set_num_threads(before)
