"""The run folder: config.yaml, log.jsonl, summary.csv and the checkpoints.

Only rank 0 of a distributed job writes; the other ranks get a `SilentRunFolder` with the same
interface that writes nothing.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
from typing import Optional

from .config import Config
from .errors import UsageError

LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"


def default_run_name(cfg: Config, run_id: Optional[str] = None) -> str:
    """<dataset>-<arch>[-<method>]-<date-time> (the method named when it is not AdAutoMix), or
    -<torchrun run id> instead of the date so that restarted workers and every node agree on the
    folder."""
    suffix = run_id if run_id else f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    method = getattr(cfg, "method", "adautomix")
    return f"{cfg.dataset}-{cfg.arch}-{suffix}" if method == "adautomix" else f"{cfg.dataset}-{cfg.arch}-{method}-{suffix}"


class RunFolder:
    """config.yaml, log.jsonl (every K steps and every epoch), summary.csv (one row per epoch)."""

    writes = True

    def __init__(self, path: str, created: bool):
        self.path = path
        self.created = created  # by this invocation: removed again if it fails before a checkpoint
        self.checkpoint_written = False
        self.tensorboard = None  # a ScalarLogger that mirrors every record (--tensorboard)

    def attach_tensorboard(self) -> None:
        """Mirror every record logged from now on into ``<run folder>/tensorboard``."""
        from .evaluate.tblog import ScalarLogger
        self.tensorboard = ScalarLogger(self.file("tensorboard"))

    @classmethod
    def open(cls, folder: str, resuming: bool) -> "RunFolder":
        created = not os.path.exists(folder)
        if not resuming and os.path.exists(os.path.join(folder, LAST)):
            raise UsageError(f"run folder {folder} already holds a run; pass --resume {folder} to continue "
                             "it or choose another --run-name")
        os.makedirs(folder, exist_ok=True)
        return cls(folder, created)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_config(self, cfg: Config, extra: dict) -> None:
        import yaml
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
        from .checkpoint import atomic_save
        atomic_save(state, self.file(name))
        self.checkpoint_written = True

    def discard_if_incomplete(self) -> None:
        """Leave nothing half-written: a run folder this invocation created, and that never got
        a checkpoint, is removed again."""
        if self.created and not self.checkpoint_written and os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)


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
        self.checkpoint_written = True

    def discard_if_incomplete(self) -> None:
        pass
