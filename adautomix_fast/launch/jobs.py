"""The runs of a comparison as jobs: what each trains, how far it got, and what became of it.

A job is one (method, seed) run of a comparison folder ``<folder>/runs/<name>``. Its state is read
from the run folder alone (``run_state``), so that every launcher, a re-run of the same command and
``compare --collect`` agree on it: ``done`` (every epoch trained), ``partial`` (a checkpoint to
resume) or ``new``. What a launcher knows beyond the folder (where the job ran, its SLURM job id,
its exit status) goes to ``<folder>/jobs/<name>.json``; the training's own output to
``<folder>/logs/<name>.log`` (local launcher) or submitit's log files (``<folder>/slurm/``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from ..run.folder import LAST
from ..run.records import read_jsonl

PLAN = "plan.json"
# Exit statuses of a training stopped by a signal with a checkpoint at its batch (SIGTERM,
# SIGUSR1, Ctrl-C): the job is interrupted, not failed.
STOPPED_CODES = (143, 138, 130)


def status_of(code: int) -> str:
    """A training's exit status in the job records' words."""
    return "done" if code == 0 else "stopped" if code in STOPPED_CODES else "failed"


@dataclass
class Job:
    """One run of a comparison: its method and seed, its folder's name in runs/, and the
    training flags of a fresh start (the user's and compare's)."""
    method: str
    seed: int
    name: str
    flags: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "name": self.name, "flags": list(self.flags)}


def run_folder(folder: str, name: str) -> str:
    return os.path.join(folder, "runs", name)


def read_log(run: str) -> list[dict]:
    """The run's log.jsonl records (a torn last line of a killed run dropped)."""
    return read_jsonl(os.path.join(run, "log.jsonl"))


def run_state(run: str) -> str:
    """"done" (every epoch trained), "partial" (a checkpoint to resume) or "new"."""
    if not os.path.exists(os.path.join(run, LAST)):
        return "new"
    epochs = [r for r in read_log(run) if r.get("type") == "epoch"]
    config = os.path.join(run, "config.yaml")
    target = None
    if os.path.exists(config):
        with open(config) as f:
            target = (yaml.safe_load(f) or {}).get("epochs")
    return "done" if epochs and target is not None and epochs[-1]["epoch"] >= target else "partial"


def training_argv(folder: str, job: Job, state: str) -> list[str]:
    """The ``python -m adautomix_fast.train`` arguments that continue ``job`` from ``state``:
    a resume of its checkpoint, or a fresh start into its run folder."""
    if state == "partial":
        return ["--resume", run_folder(folder, job.name)]
    return [*job.flags, "--output", os.path.join(folder, "runs"), "--run-name", job.name]


# ---------------------------------------------------------------------------- records
def _atomic_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def record_path(folder: str, name: str) -> str:
    return os.path.join(folder, "jobs", f"{name}.json")


def read_record(folder: str, name: str) -> dict:
    """What the launchers recorded of the run ``name`` ({} when nothing)."""
    return _read_json(record_path(folder, name)) or {}


def update_record(folder: str, name: str, **fields: Any) -> dict:
    """Merge ``fields`` into the run's job record (written atomically) and return it; every
    update carries the time, host and process that made it."""
    record = read_record(folder, name)
    record.update(fields, updated=time.time(), host=socket.gethostname(), pid=os.getpid())
    _atomic_json(record_path(folder, name), record)
    return record


def running_here(record: dict) -> Optional[int]:
    """The process of a job recorded as running on this machine that is still alive, else None
    (a launcher that died left the record behind)."""
    pid = record.get("pid")
    if record.get("status") != "running" or record.get("host") != socket.gethostname() or not pid:
        return None
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return None
    except PermissionError:      # alive, another user's
        return int(pid)
    return int(pid)


def outcome(folder: str, job: Job) -> dict[str, Any]:
    """The run's state for a report: ``state`` done / partial / new, and where a launcher recorded
    it, ``failed`` (its last attempt exited with an error status and the run is not done), the
    exit ``code``, the SLURM ``job_id`` and the ``device`` it ran on."""
    state = run_state(run_folder(folder, job.name))
    record = read_record(folder, job.name)
    code = record.get("code")
    failed = state != "done" and code not in (None, 0, *STOPPED_CODES)
    return {"name": job.name, "method": job.method, "seed": job.seed, "state": state, "failed": failed,
            "code": code, "job_id": record.get("job_id"), "device": record.get("device"),
            "status": record.get("status")}


# ---------------------------------------------------------------------------- the plan
def write_plan(folder: str, payload: dict) -> None:
    """The comparison's plan (its settings, the command, every job): what ``compare --collect``
    rebuilds the table from."""
    _atomic_json(os.path.join(folder, PLAN), payload)


def read_plan(folder: str) -> Optional[dict]:
    return _read_json(os.path.join(folder, PLAN))


def jobs_of(plan: dict) -> list[Job]:
    return [Job(j["method"], j["seed"], j["name"], list(j["flags"])) for j in plan.get("jobs", [])]
