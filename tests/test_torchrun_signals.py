"""`python -m adautomix_fast.torchrun` under stop signals, on CPU with gloo (two ranks): a
preemption signal for every process of the job (as SLURM sends it) and one for the agent alone
(as Kubernetes sends it to PID 1) each stop every rank after the same step, rank 0 says so in one
line, and the exit status is 128 + the signal's number, which `[ $? -eq 138 ] && scontrol requeue`
needs (torchrun itself exits 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from adautomix_fast.run import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 1437 // 2 // 50 = 14 steps per rank and epoch; the ranks agree on a stop every 3 steps.
TRAIN = ["-m", "adautomix_fast.train", "--dataset", "digits", "--arch", "tiny", "-j", "0", "--vis-every", "0",
         "--batch-size", "50", "--epochs", "2", "--log-interval", "3", "--impl", "reference"]


def launch(tmp_path, train_args, attempt) -> subprocess.Popen:
    """The launcher in a session of its own (a signal for its process group reaches the agent and
    the workers, and nothing of pytest's); output to files, read at the end."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ADAUTOMIX_DATA", None)
    with open(tmp_path / f"out{attempt}.txt", "w") as out, open(tmp_path / f"err{attempt}.txt", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "adautomix_fast.torchrun", "--standalone",
                                 "--nproc_per_node", "2", *train_args], cwd=ROOT, env=env, stdout=out, stderr=err,
                                start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, tmp_path, attempt, timeout: float = 400.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) before the awaited moment:\n"
                        f"{(tmp_path / f'err{attempt}.txt').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("timed out waiting for the job")
        time.sleep(0.05)


def log_records(folder, kind) -> list[dict]:
    return [r for r in records.read_jsonl(os.path.join(folder, "log.jsonl")) if r.get("type") == kind]


def stop_and_check(proc, tmp_path, attempt, folder, signum, to_group) -> dict:
    """Send ``signum`` (to the job's process group, or to the agent alone), then check the exit
    status, the one stop line and the checkpoint; returns the checkpoint."""
    name = signal.Signals(signum).name
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    try:
        rc = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (tmp_path / f"err{attempt}.txt").read_text()
    assert rc == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    assert err.count(f"stopped by {name} at ") == 1, err[-3000:]           # rank 0's line only
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    stop = log_records(folder, "stop")[-1]
    assert stop["signal"] == name and stop["step"] == ckpt["global_step"]   # saved where every rank stopped
    assert ckpt["global_step"] % 3 == 0 or ckpt["batch_in_epoch"] == 0      # a log-interval boundary (or an epoch end)
    return ckpt


def test_the_launcher_exits_with_128_plus_the_stop_signal_and_rank_0_says_where_the_job_stopped(tmp_path):
    folder = tmp_path / "pre"
    first = launch(tmp_path, TRAIN + ["--output", str(tmp_path), "--run-name", "pre"], attempt=1)
    wait_for(lambda: len(log_records(folder, "train")) >= 1, first, tmp_path, 1)
    # SLURM's `--signal=USR1@120`: every process of the job step, the agent and the workers alike.
    stop_and_check(first, tmp_path, 1, folder, signal.SIGUSR1, to_group=True)
    steps = len(log_records(folder, "train"))

    # The documented requeue resumes it; a SIGTERM for the agent alone (Kubernetes, `kill PID`)
    # reaches the workers through the agent.
    second = launch(tmp_path, ["-m", "adautomix_fast.train", "--resume", str(folder)], attempt=2)
    wait_for(lambda: len(log_records(folder, "train")) > steps, second, tmp_path, 2)
    stop_and_check(second, tmp_path, 2, folder, signal.SIGTERM, to_group=False)
    assert [s["signal"] for s in log_records(folder, "stop")] == ["SIGUSR1", "SIGTERM"]
