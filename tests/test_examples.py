"""The library API's examples run end to end (a few steps each, on the CPU here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_own_loop_trains_evaluates_and_saves(tmp_path):
    stdout = run_example("own_loop.py", tmp_path, "--epochs", "1", "--max-steps", "3", "--batch-size", "16")
    assert "epoch 1: loss" in stdout and "teacher top-1 on 297 held-out digits" in stdout
    import torch
    state = torch.load(tmp_path / "own_loop_checkpoint.pt", weights_only=True)
    assert state["step"]["global_step"] == 3 and int(state["model"]["num_updates"]) == 3


def test_lightning_module_fits(tmp_path):
    pytest.importorskip("lightning")
    stdout = run_example("lightning_module.py", tmp_path, "--epochs", "1", "--max-steps", "2", "--batch-size", "16")
    assert "teacher_top1" in stdout
