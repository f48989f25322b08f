"""A failure of the compiled step ends the run with one line naming the step, the torch version
and the fallback, and leaves the last checkpoint as it was: an exception raised by the compiled
code, and a death in native code (an abort inside a generated kernel), which no Python code can
catch but the extension's handlers report."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import torch

from adautomix_fast.runtime.fatal import available
from adautomix_fast.step import fused

from cli_helpers import run_cli, single_error_line

FAST = ["--arch", "tiny", "--img-size", "16", "--batch-size", "100", "--workers", "0", "--no-amp", "--vis-every", "0"]


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_an_exception_of_the_compiled_step_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    common = [*FAST, "--epochs", "2", "--output", str(tmp_path), "--run-name", "r"]
    code, _, err = run_cli([*common, "--stop-after", "1", "--impl", "reference"], capsys)
    assert code == 0, err
    last = tmp_path / "r" / "checkpoint-last.pt"
    before = digest(last)

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("index out of bounds: 0 <= tmp40 < 12L\n(a multi-line\ncompiler message)")
        return run

    monkeypatch.setattr(fused.torch, "compile", broken_compile)
    code, _, err = run_cli([*common, "--resume", str(tmp_path / "r"), "--impl", "fused"], capsys)
    assert code == 1
    line = single_error_line(err)
    assert "fused step" in line and f"torch {torch.__version__}" in line and "--impl reference" in line
    assert "index out of bounds: 0 <= tmp40 < 12L" in line and str(tmp_path / "r") in line
    assert digest(last) == before


_ABORT_IN_THE_STEP = r"""
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_fused import make_steps, batch
_, step = make_steps(3, compile=True)
x, y = batch()
step._bind(x.shape[0])
step._compiled = lambda *args: os.abort()     # what a failed check in an OpenMP region does
step(x, y)
"""


def test_a_death_in_native_code_writes_the_one_line_first():
    if not available():
        import pytest
        pytest.skip("the C++ extension is not built: nothing can report a death in native code")
    code = _ABORT_IN_THE_STEP.format(tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == -6, out.stderr[-2000:]          # still dies of SIGABRT, as it would have
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-2000:]
    assert "fused step" in lines[0] and f"torch {torch.__version__}" in lines[0] and "--impl reference" in lines[0]
    assert lines[0].endswith("(SIGABRT)")
