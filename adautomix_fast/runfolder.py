"""The run folder: config.yaml, log.jsonl, summary.csv, the checkpoints and the run's lock.

Only rank 0 of a distributed job writes; the other ranks get a `SilentRunFolder` with the same
interface that writes nothing.

A run holds ``run.lock`` (an advisory ``flock`` on a file naming its host and PID) for as long as
it runs, so that a second run started with the same ``--output`` and ``--run-name`` refuses
instead of interleaving its records with the first one's. The kernel releases the lock when the
holder exits, however it exits, so a lock left by a killed run is taken over by the next one.
"""

from __future__ import annotations

import csv
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
from typing import Optional

import yaml

from . import records
from .checkpoint import NoSpaceError, atomic_save, remove_orphaned_temporaries
from .config import Config
from .errors import UsageError
from .evaluate.tblog import ScalarLogger

LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
LOCK = "run.lock"
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _not_writable(folder: str, exc: OSError) -> UsageError:
    return UsageError(f"cannot write to the run folder {folder} ({exc.strerror or exc}); pass --output DIR "
                      "on a writable disk")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<folder>/run.lock`` holding ``host H pid P since T``."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK)
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno in _NOT_WRITABLE:
                    raise _not_writable(self.folder, exc) from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UsageError(f"run folder {self.folder} is in use by another run ({holder or 'holder unknown'}); "
                                     "wait for it to end, or choose another --run-name") from None
                raise
            # A releasing holder unlinks the file after we opened it: lock the file now at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} since {stamp}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)   # before unlocking: a waiting opener then re-checks the path
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 512).decode(errors="replace").strip()
    except OSError:
        return ""


def default_run_name(cfg: Config, run_id: Optional[str] = None) -> str:
    """<dataset>-<arch>[-<method>]-<date-time> (the method named when it is not AdAutoMix), or
    -<torchrun run id> instead of the date so that restarted workers and every node agree on the
    folder."""
    suffix = run_id if run_id else f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    method = getattr(cfg, "method", "adautomix")
    arch = cfg.arch.replace("/", "-")   # timm/<name>, tv/<name>: one folder, not two
    return f"{cfg.dataset}-{arch}-{suffix}" if method == "adautomix" else f"{cfg.dataset}-{arch}-{method}-{suffix}"


class RunFolder:
    """config.yaml, log.jsonl (every K steps and every epoch), summary.csv (one row per epoch)."""

    writes = True

    def __init__(self, path: str, created: bool, lock: Optional[RunLock] = None):
        self.path = path
        self.created = created  # by this invocation: removed again if it fails before a checkpoint
        self.checkpoint_written = False
        self.tensorboard = None  # a ScalarLogger that mirrors every record (--tensorboard)
        self.lock = lock
        self.last_saved: Optional[dict] = None  # where the newest checkpoint-last.pt stands

    def attach_tensorboard(self) -> None:
        """Mirror every record logged from now on into ``<run folder>/tensorboard``."""
        self.tensorboard = ScalarLogger(self.file("tensorboard"))

    @classmethod
    def open(cls, folder: str, resuming: Optional[dict] = None) -> "RunFolder":
        """Create (or reopen) and lock the run folder. ``resuming``: the checkpoint being
        continued, whose position (epoch, global step) the records are cut back to."""
        created = not os.path.exists(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise _not_writable(folder, exc) from None
            raise
        lock = None
        try:
            lock = RunLock(folder).acquire()
            if not resuming and os.path.exists(os.path.join(folder, LAST)):
                raise UsageError(f"run folder {folder} already holds a run; pass --resume {folder} to continue "
                                 "it or choose another --run-name")
            remove_orphaned_temporaries(folder)
            if resuming:
                records.truncate_after(folder, int(resuming["epoch"]), int(resuming["global_step"]))
            else:
                # Records of an earlier attempt that never reached a checkpoint: nothing can continue them.
                for name in ("log.jsonl", "summary.csv"):
                    if os.path.exists(os.path.join(folder, name)):
                        os.unlink(os.path.join(folder, name))
        except BaseException:
            if lock is not None:
                lock.release()
            if created:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        opened = cls(folder, created, lock)
        if resuming:
            opened.last_saved = {k: int(resuming.get(k, 0)) for k in ("epoch", "batch_in_epoch", "global_step")}
            opened.complete_records(resuming.get("records"))
        return opened

    def complete_records(self, saved: Optional[dict]) -> None:
        """Append the epoch records an epoch-end checkpoint carries when the process that wrote
        it died before writing them (the checkpoint is written first)."""
        if not saved:
            return
        epoch = saved["log"].get("epoch")
        if not any(r.get("type") == "epoch" and r.get("epoch") == epoch for r in records.read_jsonl(self.file("log.jsonl"))):
            self.log(saved["log"])
        if not any(records.number(r.get("epoch")) == epoch for r in records.read_csv_rows(self.file("summary.csv"))):
            self.summary_row(saved["summary"])

    def close(self) -> None:
        """Release the run folder's lock (the run has ended, whichever way)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_config(self, cfg: Config, extra: dict) -> None:
        data = {**cfg.to_dict(), **extra}
        tmp = self.file(".config.yaml.tmp")
        with open(tmp, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        os.replace(tmp, self.file("config.yaml"))

    def log(self, record: dict) -> None:
        with open(self.file("log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.log(record)
            self.tensorboard.flush()

    def summary_row(self, row: dict) -> None:
        path = self.file("summary.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def save(self, state: dict, name: str) -> None:
        try:
            atomic_save(state, self.file(name))
        except NoSpaceError as exc:
            have = self.last_saved is not None or os.path.exists(self.file(LAST))
            kept = (f"{describe_checkpoint(self.last_saved)} ({self.file(LAST)}) is kept; free some space and "
                    f"resume with --resume {self.path}" if have else
                    "no checkpoint was written yet; free some space and start again")
            raise UsageError(f"no space left in {self.path} to write {name} (needs about {_mib(exc.needed)}, "
                             f"{_mib(exc.free)} free); {kept}") from None
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise _not_writable(self.path, exc) from None
            raise
        self._saved(state, name)

    def _saved(self, state: dict, name: str) -> None:
        self.checkpoint_written = True
        if name == LAST:
            self.last_saved = {"epoch": int(state["epoch"]), "batch_in_epoch": int(state.get("batch_in_epoch", 0)),
                               "global_step": int(state["global_step"])}

    def discard_if_incomplete(self) -> None:
        """Leave nothing half-written: a run folder this invocation created, and that never got
        a checkpoint, is removed again."""
        self.close()
        if self.created and not self.checkpoint_written and os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def describe_checkpoint(position: Optional[dict]) -> str:
    """"the checkpoint after epoch 3", or "the mid-epoch checkpoint at epoch 4, batch 17"."""
    if not position:
        return "the previous checkpoint"
    if position.get("batch_in_epoch"):
        return f"the mid-epoch checkpoint at epoch {position['epoch'] + 1}, batch {position['batch_in_epoch']}"
    return f"the checkpoint after epoch {position['epoch']}"


class SilentRunFolder(RunFolder):
    """The run folder as seen by ranks other than 0: same path, no writes."""

    writes = False

    def __init__(self, path: str):
        super().__init__(path, created=False)

    def write_config(self, cfg, extra) -> None:
        pass

    def attach_tensorboard(self) -> None:
        pass

    def log(self, record) -> None:
        pass

    def summary_row(self, row) -> None:
        pass

    def save(self, state, name) -> None:
        self._saved(state, name)

    def discard_if_incomplete(self) -> None:
        pass
