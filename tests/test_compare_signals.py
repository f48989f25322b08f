"""`compare` under stop signals: real signals to a real `python -m adautomix_fast.compare` and its
training child. A signal for compare's PID alone (`kill PID`, Kubernetes, systemd) reaches the
training, which stops as it would alone; compare exits with the training's code and starts no
further method; Ctrl-C for the whole process group is one clean stop; the same command again
resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from adautomix_fast.run import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 14 steps per digits epoch; two epochs, so that the signal lands in the first one.
TRAIN = ["--dataset", "digits", "--arch", "tiny", "-j", "0", "--vis-every", "0", "--batch-size", "100",
         "--epochs", "2", "--log-interval", "1"]


def start_compare(tmp_path, methods, *extra) -> subprocess.Popen:
    """compare as a separate process in its own session (so that a signal for its process group
    reaches what it started and nothing of pytest's); its output goes to files, read at the end."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")   # one thread: 2 busy cores
    cmd = [sys.executable, "-m", "adautomix_fast.compare", "--methods", methods, "--output", str(tmp_path),
           "--name", "c", *TRAIN, *extra]
    with open(tmp_path / "out.txt", "a") as out, open(tmp_path / "err.txt", "a") as err:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, tmp_path, timeout: float = 400.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"compare ended (rc {proc.returncode}) before the awaited moment:\n"
                        f"{(tmp_path / 'err.txt').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the training")
        time.sleep(0.05)


def train_records(folder) -> list[dict]:
    return [r for r in records.read_jsonl(os.path.join(folder, "log.jsonl")) if r.get("type") == "train"]


def holder_pid(folder):
    """The PID of the training holding the run folder's lock (``host H pid P since T``), or None."""
    try:
        match = re.search(r"\bpid (\d+)\b", (folder / "run.lock").read_text())
    except FileNotFoundError:
        return None
    return int(match.group(1)) if match else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def message_lines(tmp_path) -> list[str]:
    """compare's and its training's stderr, progress bars left out."""
    err = (tmp_path / "err.txt").read_text()
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and not line.startswith("epoch ")]


def stop_when_training(tmp_path, methods, *extra, ready=lambda folder: True):
    """Start compare, wait until its first method's training has logged 3 steps and holds its run
    folder; returns (compare, the training's PID, its run folder)."""
    folder = tmp_path / "c" / "runs" / methods.split(",")[0]
    proc = start_compare(tmp_path, methods, *extra)
    wait_for(lambda: len(train_records(folder)) >= 3 and holder_pid(folder) and ready(folder), proc, tmp_path)
    return proc, holder_pid(folder), folder


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_for_compares_pid_alone_stops_the_training_and_compare_exits_with_its_code(tmp_path, signum):
    name = signal.Signals(signum).name
    proc, child, folder = stop_when_training(tmp_path, "vanilla,mixup")
    try:
        os.kill(proc.pid, signum)                  # compare's PID alone, as `kill PID` or Kubernetes send it
        rc = proc.wait(timeout=400)
        assert rc == 128 + signum, (tmp_path / "err.txt").read_text()[-3000:]
        assert not alive(child)                    # no orphan holding the run folder
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    lines = message_lines(tmp_path)
    assert not [line for line in lines if "Traceback" in line], lines
    assert sum(line.startswith(f"stopped by {name} at ") for line in lines) == 1, lines   # the training's line
    assert lines[-1] == (f"compare stopped by {name} while training vanilla (1 of 2 methods); run the same command "
                         "again to continue"), lines
    assert not (tmp_path / "c" / "runs" / "mixup").exists()                     # no further method started
    stops = [r for r in records.read_jsonl(folder / "log.jsonl") if r.get("type") == "stop"]
    assert [s["signal"] for s in stops] == [name]
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert ckpt["global_step"] == stops[0]["step"]                              # saved where it stopped
    if signum != signal.SIGTERM:
        return
    # The same command again resumes the stopped method where it stopped, then trains the next.
    rerun = start_compare(tmp_path, "vanilla,mixup")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "err.txt").read_text()[-3000:]
    assert "[1/2] vanilla: resuming" in (tmp_path / "out.txt").read_text()
    starts = [r for r in records.read_jsonl(folder / "log.jsonl") if r.get("type") == "start"]
    assert (starts[-1]["resume_epoch"], starts[-1]["resume_batch"]) == (ckpt["epoch"], ckpt["batch_in_epoch"])
    assert (tmp_path / "c" / "comparison.md").exists()


def test_ctrl_c_for_compares_process_group_is_one_clean_stop_and_the_same_command_resumes(tmp_path):
    """A terminal's Ctrl-C signals compare's whole process group: the training hears it once and
    keeps a checkpoint; compare adds one line saying how to continue, and exits 130."""
    proc, child, folder = stop_when_training(tmp_path, "vanilla", "--save-every-steps", "2",
                                             ready=lambda f: (f / "checkpoint-last.pt").exists())
    try:
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=400)
        assert rc == 130, (tmp_path / "err.txt").read_text()[-3000:]
        assert not alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    lines = message_lines(tmp_path)
    assert not [line for line in lines if "Traceback" in line or "KeyboardInterrupt" in line], lines
    assert len(lines) == 2, lines
    assert lines[0].endswith(f"continue with --resume {folder}"), lines     # the training's line: what it kept
    assert lines[1] == ("compare stopped by SIGINT while training vanilla (1 of 1 methods); run the same command "
                        "again to continue")
    kept = torch.load(folder / "checkpoint-last.pt", weights_only=True)

    rerun = start_compare(tmp_path, "vanilla")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "err.txt").read_text()[-3000:]
    assert "[1/1] vanilla: resuming" in (tmp_path / "out.txt").read_text()
    starts = [r for r in records.read_jsonl(folder / "log.jsonl") if r.get("type") == "start"]
    assert (starts[-1]["resume_epoch"], starts[-1]["resume_batch"]) == (kept["epoch"], kept["batch_in_epoch"])


def test_a_scheduler_signalling_every_process_stops_the_training_once_at_its_batch(tmp_path):
    """srun and systemd signal every process of the job: the training hears SIGTERM directly and
    again through compare, and takes the copy for the same request (not "exit at once")."""
    proc, child, folder = stop_when_training(tmp_path, "vanilla")
    try:
        os.kill(child, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=400)
        assert rc == 143, (tmp_path / "err.txt").read_text()[-3000:]
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    lines = message_lines(tmp_path)
    assert not [line for line in lines if "again while stopping" in line], lines
    stops = [r for r in records.read_jsonl(folder / "log.jsonl") if r.get("type") == "stop"]
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert [s["signal"] for s in stops] == ["SIGTERM"] and ckpt["global_step"] == stops[0]["step"]


def test_a_second_signal_for_compare_ends_the_training_at_once(tmp_path):
    """The escape hatch stays: a repeat for compare (the training ignores copies) kills it; the
    last complete checkpoint is what remains."""
    proc, child, folder = stop_when_training(tmp_path, "vanilla")
    os.kill(child, signal.SIGSTOP)        # hold the training so that it cannot finish stopping first
    try:
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=400)
        assert rc == 143, (tmp_path / "err.txt").read_text()[-3000:]
        deadline = time.monotonic() + 60
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    assert any("again while stopping" in line for line in message_lines(tmp_path))
