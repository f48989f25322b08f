"""A run never deletes or overwrites what it did not write: records of finished runs whose
checkpoints were pruned, folders of one's own, names that lead out of ``--output``, and disks
that cannot take a checkpoint (full, over the file-size limit) as one line.

The disk cases run for real where the machine allows: a process with a file-size limit
(RLIMIT_FSIZE) always, a 3 MiB tmpfs where this process may mount one (root in a container),
the errno injected at the writer otherwise."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from adautomix_fast.config import resolve
from adautomix_fast.run import checkpoint as ckpt_lib
from adautomix_fast.run.folder import default_run_name

from cli_helpers import read_log, run_cli, single_error_line

TINY = ["--arch", "tiny", "--workers", "0", "--batch-size", "100", "--vis-every", "0"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------- records of other runs
def test_a_finished_run_whose_checkpoints_were_pruned_keeps_its_records(tmp_path, capsys):
    args = TINY + ["--epochs", "1", "--output", str(tmp_path), "--run-name", "run"]
    assert run_cli(args, capsys)[0] == 0
    folder = tmp_path / "run"
    for ckpt in folder.glob("checkpoint-*.pt"):
        ckpt.unlink()
    before = _files(folder)
    code, _, err = run_cli(args, capsys)   # the same command again
    line = single_error_line(err)
    assert code == 2 and "1 epoch record in log.jsonl" in line and "1 row in summary.csv" in line, line
    assert "--run-name" in line
    assert _files(folder) == before


def test_a_folder_of_ones_own_with_a_summary_is_refused_untouched(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.csv").write_text("epoch,top1\n1,50.0\n2,60.0\n")
    (mine / "notes.txt").write_text("my notes\n")
    before = _files(mine)
    code, _, err = run_cli(TINY + ["--epochs", "1", "--output", str(tmp_path), "--run-name", "mine"], capsys)
    assert code == 2 and "2 rows in summary.csv" in single_error_line(err)
    assert _files(mine) == before


def test_a_config_of_another_configuration_is_refused(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("lr: 0.5\nfingerprint: 0123456789abcdef\n")
    code, _, err = run_cli(TINY + ["--epochs", "1", "--output", str(tmp_path), "--run-name", "run"], capsys)
    assert code == 2 and "config.yaml of another configuration" in single_error_line(err)
    assert (folder / "config.yaml").read_text() == "lr: 0.5\nfingerprint: 0123456789abcdef\n"


def test_a_best_checkpoint_without_a_last_one_is_refused(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint-best.pt").write_bytes(b"weights")
    code, _, err = run_cli(TINY + ["--epochs", "1", "--output", str(tmp_path), "--run-name", "run"], capsys)
    assert code == 2 and "checkpoint-best.pt" in single_error_line(err)
    assert (folder / "checkpoint-best.pt").read_bytes() == b"weights"


def test_an_attempt_that_never_finished_an_epoch_is_restarted(tmp_path, capsys):
    """Only a log without an epoch record, of the same configuration, is deleted."""
    args = TINY + ["--epochs", "1", "--output", str(tmp_path), "--run-name", "run"]
    assert run_cli(args, capsys)[0] == 0
    folder = tmp_path / "run"
    for name in ("checkpoint-last.pt", "checkpoint-best.pt", "summary.csv"):
        (folder / name).unlink()
    log = [r for r in read_log(folder) if r["type"] != "epoch"]   # an attempt killed mid-epoch 1
    (folder / "log.jsonl").write_text("".join(__import__("json").dumps(r) + "\n" for r in log))
    assert run_cli(args, capsys)[0] == 0
    assert [r["type"] for r in read_log(folder)].count("start") == 1
    assert [r["epoch"] for r in read_log(folder) if r["type"] == "epoch"] == [1]


def test_resuming_into_a_folder_of_another_configuration_is_refused(tmp_path, capsys):
    assert run_cli(TINY + ["--epochs", "2", "--stop-after", "1", "--output", str(tmp_path), "--run-name", "a"],
                   capsys)[0] == 0
    assert run_cli(TINY + ["--epochs", "1", "--lr", "0.05", "--output", str(tmp_path), "--run-name", "b"],
                   capsys)[0] == 0
    b = tmp_path / "b"
    before = _files(b)
    # --resume a --output T with run_name b (an explicit flag) would continue a's run in b's folder.
    code, _, err = run_cli(["--resume", str(tmp_path / "a"), "--output", str(tmp_path), "--run-name", "b"], capsys)
    assert code == 2 and "config.yaml of another configuration" in single_error_line(err)
    assert _files(b) == before


# ---------------------------------------------------------------------------- run names
@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "/abs/x"])
def test_a_run_name_is_one_folder_name_inside_output(tmp_path, capsys, name):
    out = tmp_path / "out"
    code, _, err = run_cli(TINY + ["--epochs", "1", "--output", str(out), "--run-name", name], capsys)
    line = single_error_line(err)
    assert code == 2 and "--run-name" in line and "single folder name" in line and "--output" in line
    assert not out.exists() and not (tmp_path / "x").exists()


def test_default_run_names_of_runs_started_in_the_same_second_differ():
    cfg = resolve({"arch": "tiny"})
    names = {default_run_name(cfg) for _ in range(50)}
    assert len(names) == 50
    assert all(f"-s{cfg.seed}-" in n for n in names)
    assert default_run_name(cfg, run_id="job7") == default_run_name(cfg, run_id="job7")   # torchrun: stable


def test_two_runs_started_together_without_a_run_name_both_train(tmp_path):
    """Two processes started at the same moment with the same command (an array job's tasks)."""
    args = [sys.executable, "-m", "adautomix_fast.train", *TINY, "--epochs", "1", "--output", str(tmp_path)]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert len([p for p in tmp_path.iterdir() if (p / "checkpoint-last.pt").exists()]) == 2


# ---------------------------------------------------------------------------- disks
def test_output_naming_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine\n")
    for output in (target, target / "sub"):
        code, _, err = run_cli(TINY + ["--epochs", "1", "--output", str(output), "--run-name", "run"], capsys)
        assert code == 2 and "is a file" in single_error_line(err) and "--output" in err
    assert target.read_text() == "mine\n"


FSIZE_RUN = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
from adautomix_fast.train import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_file_size_limit_is_one_line_and_exit_2(tmp_path):
    """``ulimit -f`` below the checkpoint's size: the zip writer's failure carries no errno
    ("unexpected pos N vs M"); the write underneath fails with EFBIG."""
    limit = 256 * 1024   # the tiny network's checkpoint is about 1 MiB; the records fit
    proc = subprocess.run([sys.executable, "-c", FSIZE_RUN, str(limit), *TINY, "--epochs", "1",
                           "--output", str(tmp_path), "--run-name", "run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = single_error_line(proc.stderr)
    assert "file-size limit (ulimit -f, 0.2 MiB)" in line and "checkpoint-last.pt" in line, line
    assert not (tmp_path / "run").exists()   # nothing half-written: the folder this run made is gone


@contextlib.contextmanager
def small_tmpfs(size: str):
    """A tmpfs of ``size`` mounted for the test, or a skip where this process may not mount."""
    where = tempfile.mkdtemp(prefix="adautomix-tmpfs-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        os.rmdir(where)
        pytest.skip("mounting a tmpfs needs root; the errno-injection test covers the classification")
    try:
        yield where
    finally:
        subprocess.run(["umount", where], capture_output=True)
        os.rmdir(where)


def test_a_full_tmpfs_is_one_line_and_exit_2():
    """A real 3 MiB disk with only about 500 KiB left when the first checkpoint is written."""
    with small_tmpfs("3m") as disk:
        with open(os.path.join(disk, "filler"), "wb") as f:
            f.write(b"\0" * (3 * 2 ** 20 - 500 * 2 ** 10))
        proc = subprocess.run([sys.executable, "-m", "adautomix_fast.train", *TINY, "--epochs", "1",
                               "--output", disk, "--run-name", "run"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        line = single_error_line(proc.stderr)
        assert f"no space left in {os.path.join(disk, 'run')}" in line and "MiB free" in line, line
        assert sorted(os.listdir(disk)) == ["filler"]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"),
                                         (errno.EFBIG, "file-size limit")])
def test_the_failed_writes_errno_decides_not_torchs_message(tmp_path, monkeypatch, code, words):
    """torch.save into a file whose write fails with ``code``: torch's own RuntimeError says
    "unexpected pos"; the classification reads the errno of the failed write."""
    real_open = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Failing(real_open(fd, mode)))
    with pytest.raises(ckpt_lib.NoSpaceError) as info:
        ckpt_lib.atomic_save({"w": torch.zeros(1000)}, str(tmp_path / "c.pt"))
    assert info.value.errno == code and words in info.value.describe(str(tmp_path), "c.pt")
    assert os.listdir(tmp_path) == []


def test_a_failure_that_is_not_the_disks_is_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(RuntimeError("pickling failed")))
    with pytest.raises(RuntimeError, match="pickling failed"):
        ckpt_lib.atomic_save({"w": torch.zeros(10)}, str(tmp_path / "c.pt"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/b"])
def test_a_comparison_name_is_one_folder_name_inside_output(tmp_path, name):
    from adautomix_fast.compare import main as compare_main
    assert compare_main(["--methods", "vanilla", "--output", str(tmp_path / "out"), "--name", name]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()
