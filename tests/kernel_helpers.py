"""Helpers shared by the two Triton kernel test files."""

import os
import subprocess
import sys

import pytest
import triton


def build_for_sm90(ops: str) -> None:
    """Compile the benchmark-shape variants of ``ops`` for an H100 ahead of time with Triton's
    own ptxas: the interpreter cannot see compiled-mode errors (tl.dot shapes, types, shared
    memory)."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this Triton ships no ptxas")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-m", "adautomix_fast.kernels._build_check", "--quick", "--ops", ops],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def replace_kernels_with_tripwires(monkeypatch, module, prefix: str, expected: int) -> None:
    """Every kernel of ``module`` replaced by a tripwire: a check must fire before any launch."""
    class Tripwire:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched")
    names = [n for n in dir(module) if n.startswith(prefix) and n.endswith("_kernel")]
    assert len(names) == expected
    for name in names:
        monkeypatch.setattr(module, name, Tripwire())
