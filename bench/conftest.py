"""pytest-benchmark suites of bench/: ``pytest bench/ --benchmark-only`` (``make bench``).

    pytest bench/ --benchmark-only                                   # every suite, this machine's sizes
    pytest bench/ --benchmark-only --benchmark-autosave              # ... and keep the run (.benchmarks/)
    pytest bench/ --benchmark-only --benchmark-compare               # against the last saved run
    pytest bench/ --benchmark-only --benchmark-json out.json         # pytest-benchmark's JSON

Sizes (``--bench-size``): ``gpu`` (default with CUDA: the sizes of docs/benchmarks.md), ``cpu``
(default without CUDA: small versions a 2-core CPU finishes in minutes) and ``smoke`` (tiny, to
check that the suites run). Benchmarks are grouped per shape (``step-cifar``, ``ema-r50``, ...), so a
table compares the implementations of one shape. Every saved run's ``machine_info`` carries the
device, the CPU capability, the thread count and the torch, triton and CUDA versions.

These suites time each call with the host clock and synchronise the GPU after every call (so a
call's time includes its own kernels); the side-by-side ratio reports (``python -m bench.step``,
``make gpu-check``) time CUDA steps with events instead and report ratios measured in one process.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from bench import common  # noqa: E402  (after ROOT is on sys.path)

SIZES = ("gpu", "cpu", "smoke")


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=SIZES, default=None,
                     help="benchmark sizes: gpu (default with CUDA), cpu (default without), smoke (tiny)")
    parser.addoption("--bench-compiled", action="store_true", default=False,
                     help="also time the torch.compile'd steps on a CPU "
                          "(minutes of compilation; on by default on CUDA)")


def pytest_benchmark_update_machine_info(config, machine_info):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine_info["adautomix_fast"] = common.device_info(device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def bench_size(request, device) -> str:
    return request.config.getoption("--bench-size") or ("gpu" if device.type == "cuda" else "cpu")


@pytest.fixture(scope="session")
def bench_compiled(request, device) -> bool:
    return device.type == "cuda" or request.config.getoption("--bench-compiled")

