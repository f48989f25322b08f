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
import secrets
import shutil
import socket
from typing import Optional

import yaml

from ..config import Config
from ..errors import UsageError
from ..evaluate.tblog import ScalarLogger
from . import records
from .checkpoint import DISK_FULL_ERRNOS, TMP_PREFIX, TMP_SUFFIX, NoSpaceError, atomic_save, remove_orphaned_temporaries

LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
# The last epoch-end checkpoint, kept while mid-epoch checkpoints (--save-every-steps) replace
# checkpoint-last.pt: weights saved in an epoch that then diverged may already be exploding.
EPOCH_END = "checkpoint-epoch.pt"
LOCK = "run.lock"
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


# Records a run writes as it goes; any of them means a run (not an empty attempt) was here.
_OWN_LOG_TYPES = {"start", "train", "stop"}


def _records_of_another_run(folder: str, fingerprint: str, resuming: Optional[dict]) -> str:
    """What in ``folder`` belongs to another run and would be lost by starting (or resuming)
    here, described for the refusal ("3 epoch records in log.jsonl, ..."); "" when nothing.

    Resuming into a folder other than the checkpoint's own (``--resume A --output B``) may find
    what an earlier attempt of the same resume wrote (config.yaml of the checkpoint's or this
    invocation's configuration, no checkpoint yet), but never a checkpoint-last.pt it would
    replace; a fresh start must also find no records."""
    found = []
    config = os.path.join(folder, "config.yaml")
    if os.path.exists(config):
        theirs = _config_fingerprint(config)
        ours = {fingerprint} | ({resuming.get("fingerprint")} if resuming else set())
        if theirs not in ours:
            found.append("a config.yaml of another configuration")
    if resuming:
        if os.path.exists(os.path.join(folder, LAST)):
            found.append(f"a {LAST} of its own")
        return ", ".join(found)
    log = records.read_jsonl(os.path.join(folder, "log.jsonl"))
    epochs = sum(r.get("type") == "epoch" for r in log)
    if epochs:
        found.append(f"{epochs} epoch record{'s' * (epochs != 1)} in log.jsonl")
    elif any(r.get("type") not in _OWN_LOG_TYPES for r in log) or (log and not os.path.exists(config)):
        found.append("a log.jsonl this engine did not write")
    rows = len(records.read_csv_rows(os.path.join(folder, "summary.csv")))
    if rows:
        found.append(f"{rows} row{'s' * (rows != 1)} in summary.csv")
    found += [name for name in (BEST, EPOCH_END) if os.path.exists(os.path.join(folder, name))]
    return ", ".join(found)


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _config_fingerprint(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return data.get("fingerprint") if isinstance(data, dict) else None


def _unusable_folder(folder: str, exc: OSError) -> Exception:
    """The one-line error for a run folder that cannot be made, or the original error."""
    if exc.errno in _NOT_WRITABLE:
        return _not_writable(folder, exc)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        # EEXIST from makedirs(exist_ok=True): the path exists and is not a folder.
        return UsageError(f"cannot make the run folder {folder}: it, or a folder above it, is a file; pass "
                          "--output DIR naming a folder")
    if exc.errno in DISK_FULL_ERRNOS:
        return UsageError(f"cannot make the run folder {folder} ({exc.strerror}); free some space or pass "
                          "--output DIR on another disk")
    return exc


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
                    raise UsageError(f"run folder {self.folder} is in use by another run "
                                     f"({holder or 'holder unknown'}); "
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
    """<dataset>-<arch>[-<method>]-<date-time>-s<seed>-<6 random hex digits> (the method named
    when it is not AdAutoMix): jobs started in the same second (an array job's tasks) get
    folders of their own. Under torchrun, -<run id> instead of the date and the suffix, so that
    restarted workers and every node agree on the folder."""
    if run_id:
        suffix = run_id
    else:
        suffix = f"{datetime.datetime.now():%Y%m%d-%H%M%S}-s{cfg.seed}-{secrets.token_hex(3)}"
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
        self.epoch_end_saved: Optional[dict] = None  # where checkpoint-epoch.pt stands, if written here

    def attach_tensorboard(self) -> None:
        """Mirror every record logged from now on into ``<run folder>/tensorboard``."""
        self.tensorboard = ScalarLogger(self.file("tensorboard"))

    @classmethod
    def open(cls, folder: str, fingerprint: str, resuming: Optional[dict] = None,
             resumed_from: Optional[str] = None) -> "RunFolder":
        """Create (or reopen) and lock the run folder. ``fingerprint``: this run's configuration
        (Config.fingerprint). ``resuming``: the checkpoint being continued, whose position (epoch,
        global step) the records are cut back to; ``resumed_from``: the file it was read from.

        Only what this engine wrote for this run is ever removed: a fresh run refuses a folder
        that holds another run's records (epoch records, summary rows, checkpoints, or a
        config.yaml of another configuration) and deletes only the log of an earlier attempt of
        the same configuration that never finished an epoch."""
        created = not os.path.exists(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise _unusable_folder(folder, exc) from None
        lock = None
        try:
            lock = RunLock(folder).acquire()
            if not resuming and os.path.exists(os.path.join(folder, LAST)):
                raise UsageError(f"run folder {folder} already holds a run; pass --resume {folder} to continue "
                                 "it or choose another --run-name")
            if resuming and _same_folder(folder, os.path.dirname(os.path.abspath(resumed_from or folder))):
                kept = ""   # the run continues in its own folder (its earlier --override-lr included)
            else:
                kept = _records_of_another_run(folder, fingerprint, resuming)
            if kept and resuming:
                raise UsageError(f"run folder {folder} holds {kept}; nothing was changed: resume into another "
                                 "--run-name (or --output), or move those files away")
            if kept:
                raise UsageError(f"run folder {folder} holds {kept} but no checkpoint-last.pt to continue; nothing "
                                 "was changed: choose another --run-name (or --output), or move those files away")
            remove_orphaned_temporaries(folder)
            if resuming:
                records.truncate_after(folder, int(resuming["epoch"]), int(resuming["global_step"]))
            else:
                # An earlier attempt of this configuration that never finished an epoch: its
                # start and step records describe nothing a checkpoint holds.
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
        if not any(r.get("type") == "epoch" and r.get("epoch") == epoch
                   for r in records.read_jsonl(self.file("log.jsonl"))):
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
            if (name == LAST and state.get("batch_in_epoch") and self.last_saved is not None
                    and not self.last_saved["batch_in_epoch"]):
                self._keep_epoch_end()
            atomic_save(state, self.file(name))
        except NoSpaceError as exc:
            have = self.last_saved is not None or os.path.exists(self.file(LAST))
            kept = (f"{describe_checkpoint(self.last_saved)} ({self.file(LAST)}) is kept; then resume with "
                    f"--resume {self.path}" if have else "no checkpoint was written yet; then start again")
            raise UsageError(f"{exc.describe(self.path, name)}; {kept}") from None
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise _not_writable(self.path, exc) from None
            raise
        self._saved(state, name)

    def _keep_epoch_end(self) -> None:
        """Keep checkpoint-last.pt, an epoch-end checkpoint about to be replaced by the epoch's
        first mid-epoch one, as checkpoint-epoch.pt: a hard link (no copy, no space), else a
        copy where the file system has none; renamed into place, so a crash leaves a whole file."""
        tmp = self.file(f"{TMP_PREFIX}epoch{TMP_SUFFIX}")
        try:
            os.link(self.file(LAST), tmp)
        except FileExistsError:
            os.unlink(tmp)
            return self._keep_epoch_end()
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise NoSpaceError(tmp, exc.errno, os.path.getsize(self.file(LAST)), 0) from None
            shutil.copyfile(self.file(LAST), tmp)
        os.replace(tmp, self.file(EPOCH_END))
        self.epoch_end_saved = dict(self.last_saved)

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
