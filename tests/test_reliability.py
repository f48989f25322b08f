"""What clusters, disks and users do to a run: divergence, two runs in one folder, symlink loops,
failed saves, preemption signals, full and read-only disks, and bad settings.

Each test reproduces the situation for real where it can (real signals sent to a real training
process, two real processes for the lock, a real symlink loop) and by fault injection where it
cannot (the checkpoint writer monkeypatched to fail as a full or read-only disk does)."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from adautomix_fast.errors import DataError, UsageError
from adautomix_fast.run import checkpoint as ckpt_lib, records
from adautomix_fast.run.folder import LOCK, RunLock
from adautomix_fast.train import main

from cli_helpers import read_log, run_cli, single_error_line

TINY = ["--arch", "tiny", "--workers", "0", "--batch-size", "100"]   # 14 steps per digits epoch
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summary_epochs(folder) -> list[str]:
    with open(os.path.join(folder, "summary.csv"), newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def epoch_records(folder) -> list[int]:
    return [r["epoch"] for r in read_log(folder) if r["type"] == "epoch"]


def all_finite(path) -> bool:
    state = torch.load(path, weights_only=True)["model"]
    return not ckpt_lib.nonfinite_tensors(state.items())


def start_cli(args, **kwargs) -> subprocess.Popen:
    """`python -m adautomix_fast.train ARGS` as a separate process (its own session, so that a
    signal for its process group reaches it and its workers only)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "adautomix_fast.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the awaited moment:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def train_records(folder) -> list[dict]:
    path = os.path.join(folder, "log.jsonl")
    return [r for r in records.read_jsonl(path) if r.get("type") == "train"]


# ---------------------------------------------------------------------------- divergence
def test_divergence_in_an_epoch_shorter_than_the_log_interval_stops_the_run(tmp_path, capsys):
    """14 steps per epoch, a log record every 100: the per-step device counter is read at the
    epoch's end, so the run stops there instead of saving NaN weights and exiting 0."""
    code, _, err = run_cli(TINY + ["--epochs", "2", "--lr", "1e6", "--log-interval", "100",
                                   "--output", str(tmp_path), "--run-name", "nan"], capsys)
    line = single_error_line(err)
    assert code == 1 and "training diverged" in line and "inf/NaN" in line, err
    assert "no checkpoint was written" in line and "--lr" in line
    assert not (tmp_path / "nan").exists()   # nothing half-made: no checkpoint ever existed


def test_a_diverging_run_keeps_its_last_finite_checkpoint_and_resumes_with_a_lower_lr(tmp_path, capsys):
    folder = tmp_path / "run"
    base = TINY + ["--epochs", "3", "--log-interval", "5", "--output", str(tmp_path), "--run-name", "run"]
    assert run_cli(base + ["--stop-after", "1"], capsys)[0] == 0
    best_before = (folder / "checkpoint-best.pt").read_bytes()

    # Without --override-lr the new lr is refused, and the refusal names the flag.
    code, _, err = run_cli(["--resume", str(folder), "--lr", "1e6"], capsys)
    assert code == 2 and "--override-lr" in single_error_line(err)

    # Diverge with mid-epoch saves every 2 steps: no save may write non-finite weights.
    code, _, err = run_cli(["--resume", str(folder), "--override-lr", "--lr", "1e6", "--save-every-steps", "2"], capsys)
    line = single_error_line(err)
    assert code == 1 and "training diverged" in line, err
    assert re.search(rf"--resume {re.escape(str(folder))}(/checkpoint-epoch\.pt)? --override-lr --lr", line), line
    assert all_finite(folder / "checkpoint-last.pt") and all_finite(folder / "checkpoint-best.pt")
    assert (folder / "checkpoint-best.pt").read_bytes() == best_before
    kept = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert kept["global_step"] >= 14   # the epoch-1 checkpoint, or a finite mid-epoch one after it

    # The fix the message suggests works, and the change is on record. (From the best checkpoint:
    # the steps at lr 1e6 before the loss became NaN left finite but useless weights.)
    assert f"--resume {folder / 'checkpoint-best.pt'}" in line
    code, out, err = run_cli(["--resume", str(folder / "checkpoint-best.pt"), "--override-lr", "--lr", "0.01"], capsys)
    assert code == 0, err
    assert "learning rate overridden" in out
    starts = [r for r in read_log(folder) if r["type"] == "start"]
    assert starts[-1]["lr_override"]["lr"][1] == pytest.approx(0.01)
    final = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert final["epoch"] == 3 and final["config"]["lr"] == pytest.approx(0.01)
    assert epoch_records(folder) == [1, 2, 3] and summary_epochs(folder) == ["1", "2", "3"]


def test_the_advice_after_a_divergence_with_mid_epoch_checkpoints_trains_when_followed(tmp_path, capsys):
    """lr 200 explodes the weights a few steps before the loss becomes inf/NaN, so the mid-epoch
    checkpoints of that epoch are finite but hopeless: resumed with lr 20 they diverge again. The
    message must send the user to a checkpoint from before the diverging epoch instead; the test
    runs whatever command it advises."""
    folder = tmp_path / "run"
    base = TINY + ["--epochs", "3", "--log-interval", "5", "--vis-every", "0", "--output", str(tmp_path),
                   "--run-name", "run"]
    assert run_cli(base + ["--stop-after", "1"], capsys)[0] == 0
    code, _, err = run_cli(["--resume", str(folder), "--override-lr", "--lr", "200", "--save-every-steps", "2"],
                           capsys)
    line = single_error_line(err)
    assert code == 1 and "training diverged" in line, err
    kept = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert kept["epoch"] == 1 and kept["batch_in_epoch"] > 0, "the scenario needs a mid-epoch checkpoint"
    advised = re.search(r"(--resume \S+ --override-lr --lr [0-9.e+-]+)", line)
    assert advised and "--lr 20" in advised.group(1), line
    code, _, err = run_cli(advised.group(1).split(), capsys)
    assert code == 0, err
    final = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert final["epoch"] == 3 and not ckpt_lib.nonfinite_tensors(final["model"].items())
    assert epoch_records(folder) == [1, 2, 3]


def test_override_lr_needs_resume_and_a_new_value(tmp_path, capsys):
    code, _, err = run_cli(TINY + ["--override-lr", "--lr", "0.01", "--output", str(tmp_path)], capsys)
    assert code == 2 and "--resume" in single_error_line(err)


def test_export_refuses_a_nonfinite_teacher(tmp_path, capsys):
    folder = tmp_path / "run"
    assert run_cli(TINY + ["--epochs", "1", "--output", str(tmp_path), "--run-name", "run"], capsys)[0] == 0
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if k.startswith("teacher.") and v.is_floating_point())
    ckpt["model"][name].fill_(float("nan"))   # a checkpoint from before this check existed
    torch.save(ckpt, folder / "poisoned.pt")
    out = tmp_path / "teacher.pth"
    code, _, err = run_cli(["--resume", str(folder / "poisoned.pt"), "--eval-only", "--export", str(out)], capsys)
    assert code == 2 and "inf/NaN" in single_error_line(err) and not out.exists()


def test_nonfinite_tensors_finds_exactly_the_bad_ones():
    good = torch.randn(5, 3)
    huge = torch.full((4,), 1e38)          # finite, but its norm overflows float32
    nan = torch.tensor([1.0, float("nan")])
    inf = torch.tensor([float("-inf")], dtype=torch.float16)
    counts = torch.tensor([3], dtype=torch.int64)
    assert ckpt_lib.nonfinite_tensors([("g", good), ("h", huge), ("c", counts)]) == []
    assert sorted(ckpt_lib.nonfinite_tensors([("g", good), ("n", nan), ("h", huge), ("i", inf)])) == ["i", "n"]


# ---------------------------------------------------------------------------- the run folder's lock
def test_run_lock_refuses_a_second_holder_and_is_free_after_release(tmp_path):
    first = RunLock(str(tmp_path)).acquire()
    holder = (tmp_path / LOCK).read_text()
    assert f"pid {os.getpid()}" in holder
    with pytest.raises(UsageError, match=f"in use by another run \\(host .* pid {os.getpid()}"):
        RunLock(str(tmp_path)).acquire()
    first.release()
    assert not (tmp_path / LOCK).exists()
    RunLock(str(tmp_path)).acquire().release()


def test_two_runs_in_one_folder_the_second_refuses_and_a_dead_holder_is_taken_over(tmp_path):
    args = TINY + ["--epochs", "3", "--output", str(tmp_path), "--run-name", "shared"]
    lock = tmp_path / "shared" / LOCK
    first = start_cli(args)
    try:
        wait_for(lambda: lock.exists() and f"pid {first.pid}" in lock.read_text(), first)
        second = subprocess.run([sys.executable, "-m", "adautomix_fast.train", *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert "in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.communicate()
    # The holder was killed: its lock went with it, and the folder can be used again, by the same
    # run (another configuration would be refused: the folder holds the first one's config.yaml).
    folder = tmp_path / "shared"
    again = ["--resume", str(folder)] if (folder / "checkpoint-last.pt").exists() else args
    third = subprocess.run([sys.executable, "-m", "adautomix_fast.train", *again], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert epoch_records(folder) == [1, 2, 3] and summary_epochs(folder) == ["1", "2", "3"]


# ---------------------------------------------------------------------------- data folders
def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def _tree(root, per_class=4):
    for split in ("train", "val"):
        for c in ("c0", "c1"):
            for i in range(per_class):
                _png(root / split / c / f"{i}.png", 40 * i + (100 if c == "c1" else 0))
    return root


def test_a_symlink_loop_in_a_data_folder_is_one_line_naming_the_link(tmp_path):
    from adautomix_fast.data import build_loaders
    root = _tree(tmp_path / "data")
    link = root / "train" / "c0" / "uploop"
    os.symlink("..", link)
    with pytest.raises(DataError, match=f"symbolic link {link} leads to") as info:
        build_loaders("folder", str(root), 2, workers=0, image_size=16)
    assert "\n" not in str(info.value)


def test_links_to_files_and_to_outside_folders_are_followed(tmp_path):
    from adautomix_fast.data import build_loaders
    root = _tree(tmp_path / "data")
    _png(tmp_path / "elsewhere" / "extra.png", 7)
    _png(tmp_path / "outside" / "a.png", 9)
    _png(tmp_path / "outside" / "b.png", 11)
    os.symlink(tmp_path / "elsewhere" / "extra.png", root / "train" / "c0" / "linked.png")
    os.symlink(tmp_path / "outside", root / "train" / "c1" / "more")
    _, _, info = build_loaders("folder", str(root), 2, workers=0, image_size=16)
    assert info.train_size == 8 + 1 + 2


def test_a_truncated_validation_image_is_reported_before_the_first_step(tmp_path, capsys):
    root = _tree(tmp_path / "data")
    bad = root / "val" / "c1" / "2.png"
    bad.write_bytes(bad.read_bytes()[:-20])    # cut before the IEND chunk
    code, out, err = run_cli(["--dataset", "folder", "--data-dir", str(root), "--arch", "tiny", "--img-size", "16",
                              "--batch-size", "4", "--workers", "0", "--output", str(tmp_path / "runs")], capsys)
    line = single_error_line(err)
    assert code == 2 and str(bad) in line and "truncated PNG" in line
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- records and failed saves
def _fail_save_at(monkeypatch, calls: int, exc: BaseException):
    """The checkpoint writer raises ``exc`` on its ``calls``-th call (1-based), as a disk would."""
    real, count = ckpt_lib._write, {"n": 0}

    def write(obj, f):
        count["n"] += 1
        if count["n"] == calls:
            f.write(b"partial")
            raise exc
        real(obj, f)
    monkeypatch.setattr(ckpt_lib, "_write", write)


def test_a_full_disk_at_an_epoch_end_records_nothing_and_the_resumed_run_records_each_epoch_once(
        tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    # Saves: epoch 1 last + best (2 calls), epoch 2 last (3rd call) fails.
    _fail_save_at(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    code, _, err = run_cli(TINY + ["--epochs", "3", "--output", str(tmp_path), "--run-name", "run"], capsys)
    line = single_error_line(err)
    assert code == 2 and f"no space left in {folder}" in line and "MiB" in line
    assert "the checkpoint after epoch 1" in line and f"--resume {folder}" in line
    assert not list(folder.glob(".tmp-*"))
    assert torch.load(folder / "checkpoint-last.pt", weights_only=True)["epoch"] == 1
    assert epoch_records(folder) == [1] and summary_epochs(folder) == ["1"]
    monkeypatch.undo()
    assert run_cli(["--resume", str(folder)], capsys)[0] == 0
    assert epoch_records(folder) == [1, 2, 3] and summary_epochs(folder) == ["1", "2", "3"]


def test_torchs_enforce_failure_on_a_full_disk_is_the_same_one_line(tmp_path, monkeypatch, capsys):
    import shutil
    _fail_save_at(monkeypatch, 1, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0; "
                                                "PytorchStreamWriter failed writing file data/0: file write failed"))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1024))
    code, _, err = run_cli(TINY + ["--epochs", "1", "--output", str(tmp_path), "--run-name", "run"], capsys)
    line = single_error_line(err)
    assert code == 2 and "no space left" in line and "no checkpoint was written yet" in line
    assert not (tmp_path / "run").exists()


def test_death_between_checkpoint_and_records_is_completed_on_resume(tmp_path, monkeypatch, capsys):
    from adautomix_fast.run.folder import RunFolder
    folder = tmp_path / "run"
    real = RunFolder.summary_row

    def die_at_epoch_2(self, row):
        if row["epoch"] == 2:
            raise SystemExit(9)   # the process ends after the checkpoint, before the summary row
        real(self, row)
    monkeypatch.setattr(RunFolder, "summary_row", die_at_epoch_2)
    with pytest.raises(SystemExit):
        main(TINY + ["--epochs", "3", "--output", str(tmp_path), "--run-name", "run"])
    assert torch.load(folder / "checkpoint-last.pt", weights_only=True)["epoch"] == 2
    assert summary_epochs(folder) == ["1"]
    monkeypatch.undo()
    (folder / "run.lock").unlink(missing_ok=True)
    assert run_cli(["--resume", str(folder)], capsys)[0] == 0
    assert epoch_records(folder) == [1, 2, 3] and summary_epochs(folder) == ["1", "2", "3"]


def test_readers_tolerate_a_torn_last_line(tmp_path):
    from adautomix_fast.evaluate.compare import median_last_epochs
    from adautomix_fast.evaluate.curves import read_summary
    summary = tmp_path / "summary.csv"
    summary.write_text("epoch,teacher_one_top1\r\n1,50.0\r\n2,60.0\r\n3,7")
    assert median_last_epochs(str(summary), "teacher_one")["epochs"] == 2
    assert read_summary(str(summary))["epoch"] == [1.0, 2.0]
    log = tmp_path / "log.jsonl"
    log.write_text('{"type": "epoch", "epoch": 1}\n{"type": "epoch", "ep')
    assert records.read_jsonl(str(log)) == [{"type": "epoch", "epoch": 1}]


def test_truncate_after_drops_records_past_the_checkpoint(tmp_path):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"type": "start"}, {"type": "train", "step": 10}, {"type": "epoch", "epoch": 1, "step": 14},
        {"type": "train", "step": 20}, {"type": "epoch", "epoch": 2, "step": 28}]) + '{"type": "tr')
    (tmp_path / "summary.csv").write_text("epoch,x\r\n1,0.5\r\n2,0.6\r\n")
    records.truncate_after(str(tmp_path), epoch=1, step=14)
    assert [r.get("step") for r in records.read_jsonl(str(tmp_path / "log.jsonl"))] == [None, 10, 14]
    assert summary_epochs(tmp_path) == ["1"]


def test_orphaned_temporary_checkpoints_are_removed_on_resume(tmp_path, capsys):
    folder = tmp_path / "run"
    assert run_cli(TINY + ["--epochs", "2", "--stop-after", "1", "--output", str(tmp_path), "--run-name", "run"],
                   capsys)[0] == 0
    orphan = folder / ".tmp-killedwriter.pt"
    orphan.write_bytes(b"half a checkpoint")
    assert run_cli(["--resume", str(folder)], capsys)[0] == 0
    assert not orphan.exists()


def test_a_read_only_output_folder_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import adautomix_fast.run.folder as runfolder
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):   # what a read-only mount refuses: writing
        if str(path).startswith(str(tmp_path)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(runfolder.os, "open", read_only)
    code, _, err = run_cli(TINY + ["--epochs", "1", "--output", str(tmp_path), "--run-name", "run"], capsys)
    line = single_error_line(err)
    monkeypatch.undo()
    assert code == 2 and "cannot write to the run folder" in line and "Read-only file system" in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- signals
def test_sigterm_checkpoints_at_the_exact_batch_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path, capsys):
    args = TINY + ["--epochs", "2", "--log-interval", "1", "--output", str(tmp_path)]
    folder = tmp_path / "stopped"
    proc = start_cli(args + ["--run-name", "stopped"])
    wait_for(lambda: len(train_records(folder)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith("stopped by SIGTERM at epoch 1, batch ") and f"--resume {folder}" in last
    assert "Traceback" not in err
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert 3 <= ckpt["batch_in_epoch"] <= 14 and ckpt["epoch"] == 0
    assert f"batch {ckpt['batch_in_epoch']} " in last
    assert not (folder / LOCK).exists()

    assert run_cli(["--resume", str(folder)], capsys)[0] == 0
    assert run_cli(args + ["--run-name", "whole"], capsys)[0] == 0
    resumed = torch.load(folder / "checkpoint-last.pt", weights_only=True)["model"]
    whole = torch.load(tmp_path / "whole" / "checkpoint-last.pt", weights_only=True)["model"]
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert [r["step"] for r in train_records(folder)] == list(range(1, 29))


def test_sigusr1_then_a_second_signal_exits_at_once_with_a_loadable_checkpoint(tmp_path):
    folder = tmp_path / "run"
    proc = start_cli(TINY + ["--epochs", "2", "--log-interval", "1", "--save-every-steps", "2",
                             "--output", str(tmp_path), "--run-name", "run"])
    wait_for(lambda: (folder / "checkpoint-last.pt").exists() and len(train_records(folder)) >= 3, proc)
    proc.send_signal(signal.SIGUSR1)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR1, err
    assert "Traceback" not in err
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)   # complete, whichever was last
    assert ckpt["format"] == "adautomix_fast"


def test_ctrl_c_with_data_workers_is_one_accurate_line(tmp_path):
    folder = tmp_path / "run"
    # Many short epochs: a fast CPU finishes a two-epoch run before the signal arrives.
    proc = start_cli(["--arch", "tiny", "--workers", "2", "--batch-size", "20", "--epochs", "100",
                      "--log-interval", "1", "--save-every-steps", "4", "--output", str(tmp_path), "--run-name", "run"])
    wait_for(lambda: (folder / "checkpoint-last.pt").exists() and len(train_records(folder)) >= 6, proc)
    os.killpg(proc.pid, signal.SIGINT)   # as a terminal does: the whole process group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("epoch ")]
    assert len(lines) == 1 and re.match(r"interrupted; the mid-epoch checkpoint at epoch \d+, batch ", lines[0]), err
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert f"batch {ckpt['batch_in_epoch']} in" in lines[0]


LEAKED_LOADER = """
import sys
from adautomix_fast.data import build_loaders
train, _, _ = build_loaders("digits", None, 16, workers=2)
train.set_epoch(0)
batches = iter(train)
next(batches)
print(" ".join(str(w.pid) for w in train.loader._iterator._workers), flush=True)
sys.stdin.readline()              # the test signals the workers meanwhile
next(batches)                     # they still serve batches
print("served", flush=True)
"""   # ... and the interpreter exits with the persistent workers alive: it must not hang


def test_data_workers_ignore_outside_stop_signals_and_end_with_the_main_process():
    """A scheduler's SIGTERM for the process group leaves the workers running (the main process
    stops the run); the main process's own SIGTERM (multiprocessing's terminate at interpreter
    exit) still ends them, so a process leaving persistent workers behind exits."""
    proc = subprocess.Popen([sys.executable, "-c", LEAKED_LOADER], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(workers) == 2, proc.stderr.read()
        for pid in workers:
            os.kill(pid, signal.SIGTERM)    # from this process: not the workers' main process
            os.kill(pid, signal.SIGUSR1)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert out.strip() == "served" and proc.returncode == 0, err
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("yaml_text, key", [
    ('lr: "fast"', "lr"), ('batch_size: "32"', "batch_size"), ("mix_samples: [3]", "mix_samples"),
    ('seed: "x"', "seed"), ("1: 2", "1"), ("batch_size: 2.5", "batch_size"), ("epochs: 1.5", "epochs"),
    ("lr: .nan", "lr"), ("min_lr: .inf", "min_lr"), ("amp: 1", "amp"), ("arch: [r18]", "arch"),
])
def test_wrongly_typed_yaml_values_are_one_line_and_nothing_is_written(tmp_path, capsys, yaml_text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text + "\n")
    code, _, err = run_cli(["--workers", "0", "--config", str(cfg), "--output", str(tmp_path / "runs")], capsys)
    line = single_error_line(err)
    assert code == 2 and key in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", ["--lr", "--beta", "--ema-end", "--mix-alpha", "--weight-decay"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_flags_are_refused(tmp_path, capsys, flag, value):
    code, _, err = run_cli(TINY + [f"{flag}={value}", "--output", str(tmp_path / "runs")], capsys)
    assert code == 2 and "finite" in single_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_file_that_is_not_a_checkpoint_says_so_without_torchs_unsafe_advice(tmp_path, capsys):
    import collections
    import pickle
    for name, payload in [("random.pt", os.urandom(4096)),
                          ("pickled.pt", pickle.dumps(collections.OrderedDict(a=collections.Counter())))]:
        (tmp_path / name).write_bytes(payload)
        code, _, err = run_cli(["--resume", str(tmp_path / name)], capsys)
        line = single_error_line(err)
        assert code == 2 and "not a checkpoint of this engine" in line, line
        assert "weights_only" not in line and "arbitrary code" not in line


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, ("/nonexistent-adautomix-would-be-created",))


def _not_torch_files(tmp_path):
    """name -> (bytes, words the message must hold)."""
    import io
    import pickle
    zipped = io.BytesIO()
    torch.save({"w": _RunsCode()}, zipped)
    ckpt = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, ckpt)
    return {
        "notes.txt": (b"hello world\n", "a text file of 12 bytes, not a torch file"),
        "summary.csv": (b"epoch,lr\n1,0.1\n", "a text file of 15 bytes, not a torch file"),
        "empty.pt": (b"", "an empty file (0 bytes)"),
        "image.pt": (bytes(range(256)) * 4, "a binary file of 1024 bytes"),
        "malicious.pt": (zipped.getvalue(), "a pickle holding objects other than tensors"),
        "malicious-legacy.pt": (pickle.dumps({"w": _RunsCode()}, protocol=2), "could run code"),
        "truncated.pt": (ckpt.getvalue()[: len(ckpt.getvalue()) // 2], "a damaged or truncated torch file"),
    }


@pytest.mark.parametrize("flag", ["--resume", "--pretrained"])
def test_a_file_that_is_not_a_torch_file_is_named_for_what_it_is_without_torchs_unsafe_advice(tmp_path, capsys, flag):
    for name, (payload, words) in _not_torch_files(tmp_path).items():
        (tmp_path / name).write_bytes(payload)
        args = ["--resume", str(tmp_path / name)] if flag == "--resume" else \
            TINY + ["--epochs", "1", "--pretrained", str(tmp_path / name), "--output", str(tmp_path / "out")]
        code, _, err = run_cli(args, capsys)
        line = single_error_line(err)
        assert code == 2 and words in line, (name, line)
        assert "weights_only" not in line and "False" not in line and "101" not in line, line
        assert not os.path.exists("/nonexistent-adautomix-would-be-created")
    assert not (tmp_path / "out").exists()


def test_resume_of_a_run_that_never_checkpointed_says_so(tmp_path, capsys):
    folder = tmp_path / "early"
    folder.mkdir()
    (folder / "config.yaml").write_text("arch: tiny\n")
    code, _, err = run_cli(["--resume", str(folder)], capsys)
    line = single_error_line(err)
    assert code == 2 and "never reached its first checkpoint" in line and "--run-name" in line


def test_ctrl_c_while_python_runs_a_del_method_still_stops_the_loop():
    """Python runs a signal handler at the next bytecode of the main thread, wherever that is; a
    KeyboardInterrupt raised inside a ``__del__`` is printed as "Exception ignored" and lost. The
    training loop's Ctrl-C is a flag instead, which survives that."""
    from adautomix_fast.runtime.stopsignals import StopRequest

    class DroppedWhileCtrlC:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)
            sum(range(10))   # bytecode after the signal: where the handler runs

    with StopRequest() as stop:
        DroppedWhileCtrlC()
        assert stop.signum == signal.SIGINT


CTRL_C_IN_A_DEL = """
import os, signal, sys
from torch.multiprocessing import reductions
from adautomix_fast.train import main
real_del, marker = reductions.StorageWeakRef.__del__, os.path.join(sys.argv[1], "run", "checkpoint-last.pt")
state = {"sent": False}
def del_with_ctrl_c(self):
    # Ctrl-C arriving while torch frees a batch received from a DataLoader worker.
    if not state["sent"] and os.path.exists(marker):
        state["sent"] = True
        os.kill(os.getpid(), signal.SIGINT)
    real_del(self)
reductions.StorageWeakRef.__del__ = del_with_ctrl_c
sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_during_the_free_of_a_worker_batch_stops_the_run_with_a_checkpoint(tmp_path):
    """The window found under load: Ctrl-C handled inside ``StorageWeakRef.__del__`` (torch runs
    one for the shared memory of batches received from workers) was swallowed and the run
    trained on to its end. Here the signal is sent from inside that method, deterministically."""
    proc = subprocess.run([sys.executable, "-c", CTRL_C_IN_A_DEL, str(tmp_path), "--arch", "tiny", "--workers", "2",
                           "--batch-size", "10", "--epochs", "3", "--save-every-steps", "4", "--vis-every", "0",
                           "--output", str(tmp_path), "--run-name", "run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    err = proc.stderr
    assert proc.returncode == 130, err[-3000:]
    assert "Exception ignored" not in err and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("interrupted; the "), lines
    assert torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)["epoch"] < 3
