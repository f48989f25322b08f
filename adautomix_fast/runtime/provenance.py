"""What a run was made with, for its records: the software versions (torch, torchvision, triton,
CUDA, cuDNN, the NVIDIA driver) and the engine's own git revision.

Each training writes these into its ``start`` record (``log.jsonl``), so that a comparison folder
carries, run by run, what produced its numbers, also when runs resumed on other machines.
"""

from __future__ import annotations

import functools
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Optional

import torch
import torchvision

from .. import __version__

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd: list[str], cwd: Optional[str] = None) -> Optional[str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


@functools.lru_cache(maxsize=1)
def git_revision() -> Optional[str]:
    """The engine's git commit, with "+changes" where its tracked files differ from it; None
    where the package is not the checkout's own (an installed wheel, a venv inside another
    project's checkout)."""
    top = _run(["git", "rev-parse", "--show-toplevel"], cwd=PACKAGE_DIR)
    if top is None or os.path.realpath(top) != os.path.realpath(os.path.dirname(PACKAGE_DIR)):
        return None
    head = _run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR)
    if head is None:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_DIR)
    return head + ("+changes" if dirty else "")


@functools.lru_cache(maxsize=1)
def nvidia_driver() -> Optional[str]:
    """The NVIDIA driver version (nvidia-smi), None without one."""
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def triton_version() -> Optional[str]:
    try:
        return version("triton")
    except PackageNotFoundError:   # not installed (CPU wheels, macOS)
        return None


def describe() -> dict[str, Optional[str]]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "triton": triton_version(), "cuda": torch.version.cuda, "cudnn": str(cudnn) if cudnn else None,
            "driver": nvidia_driver() if torch.cuda.is_available() else None,
            "engine": __version__, "git_revision": git_revision()}
