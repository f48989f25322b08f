"""``compare --launcher slurm``: every (method, seed) run of a comparison a task of one SLURM job
array, submitted through submitit (the SLURM submission library of the field's research code).

Each task runs ``TrainingJob``: the same training command the local launcher runs (a fresh start,
or ``--resume`` of the run's checkpoint), in the task's own process; with ``--slurm-gpus-per-job``
above 1, under ``python -m adautomix_fast.torchrun --standalone`` on the job's node.

Preemption and time limits work as they do for a training alone. The array asks SLURM for
SIGUSR1 ``--slurm-signal-delay`` seconds before the time limit (``#SBATCH --signal=USR1@120``),
and submitit's handler in the task is set to that signal (``SUBMITIT_PREEMPT_SIGNAL=USR1``). During
the training the engine's own handler holds SIGUSR1: the training finishes its step, writes the
checkpoint at that batch and returns 138. The task then hands the signal to submitit, which calls
``TrainingJob.checkpoint`` (the same job again: it resumes) and requeues the task with
``scontrol requeue``; the requeued task resumes the run exactly. SIGTERM (a preemption that SLURM
requeues by itself, ``PreemptMode=REQUEUE``) also leaves a checkpoint at the batch; the requeued
task resumes it. A task whose run is already done returns at once.

``--launcher slurm-local`` runs the same pickled jobs through submitit's ``LocalExecutor`` on this
machine (real processes, the same requeue on the preemption signal): a rehearsal of the cluster
path on a workstation, and how the tests run it.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import torchrun, train
from ..errors import UsageError
from ..runtime import cputhreads
from .jobs import STOPPED_CODES, Job, run_folder, run_state, status_of, training_argv, update_record
from .local import FORWARDED_SIGNALS, SignalScope

# The engine's preemption signal (the training checkpoints on it), for submitit too.
PREEMPT_SIGNAL = "USR1"
PREEMPT_ENV = "SUBMITIT_PREEMPT_SIGNAL"
LAUNCHERS = ("local", "slurm", "slurm-local")
# How often submitit requeues a task at its time limit (its default, 3, would end a run that needs
# four --slurm-time of training): a run goes on in pieces until it is done.
MAX_REQUEUES = 10_000


def parse_time(text: str) -> int:
    """``--slurm-time`` in whole minutes (seconds rounded up), from SLURM's forms: "minutes",
    "minutes:seconds", "hours:minutes:seconds", "days-hours", "days-hours:minutes",
    "days-hours:minutes:seconds"."""
    t = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", t)
    parts = [int(p) for p in m.group(2).split(":")] if m else []
    if not m or (m.group(1) is None and len(parts) == 2 and parts[1] >= 60) or any(p >= 60 for p in parts[1:]):
        raise UsageError(f"--slurm-time {text!r}: expected minutes (e.g. 1440) or SLURM's HH:MM:SS or D-HH:MM:SS")
    if m.group(1) is not None:                       # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        seconds = int(m.group(1)) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 1:                            # minutes
        seconds = parts[0] * 60
    elif len(parts) == 2:                            # minutes:seconds
        seconds = parts[0] * 60 + parts[1]
    else:                                            # hours:minutes:seconds
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    if seconds < 60:
        raise UsageError(f"--slurm-time {text!r}: a job needs at least one minute")
    return -(-seconds // 60)


def parse_sbatch_line(line: str) -> tuple[str, Any]:
    """One ``--slurm-sbatch`` line ("--qos=high", "--exclusive", "#SBATCH --constraint a100") as the
    (key, value) submitit writes back as ``#SBATCH --key=value`` (True: a flag without value)."""
    text = line.strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    m = re.fullmatch(r"--([A-Za-z][A-Za-z0-9_-]*)(?:[= ]\s*(.+))?", text)
    if not m:
        raise UsageError(f"--slurm-sbatch {line!r}: expected one sbatch option such as --qos=high or "
                         "'--constraint a100'")
    key, value = m.group(1), m.group(2)
    if key in ("array", "output", "error", "signal", "open-mode"):
        raise UsageError(f"--slurm-sbatch {line!r}: compare sets --{key} itself (the job array, its logs and the "
                         "preemption signal)")
    return key, (True if value is None else value.strip())


@dataclass
class SlurmSettings:
    partition: Optional[str] = None
    gpus_per_job: int = 1
    time_min: int = 24 * 60
    account: Optional[str] = None
    cpus_per_job: Optional[int] = None
    mem: Optional[str] = None
    signal_delay_s: int = 120
    sbatch: dict[str, Any] = field(default_factory=dict)   # extra #SBATCH lines
    setup: list[str] = field(default_factory=list)        # shell lines before the task starts
    max_parallel: int = 256
    local: bool = False                                     # submitit's LocalExecutor

    def parameters(self, name: str) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters."""
        params: dict[str, Any] = {
            "job_name": name, "time": self.time_min, "nodes": 1, "ntasks_per_node": 1,
            "gpus_per_node": self.gpus_per_job, "signal_delay_s": self.signal_delay_s,
            "array_parallelism": self.max_parallel,
            "setup": [f"export {PREEMPT_ENV}={PREEMPT_SIGNAL}", *self.setup],
        }
        for key, value in (("partition", self.partition), ("account", self.account),
                           ("cpus_per_task", self.cpus_per_job), ("mem", self.mem)):
            if value is not None:
                params[key] = value
        if self.sbatch:
            params["additional_parameters"] = dict(self.sbatch)
        return params


def _submitit():
    """submitit, with its preemption signal set to the engine's (read by submitit at import, and
    by the class for the ``#SBATCH --signal`` line it writes)."""
    os.environ[PREEMPT_ENV] = PREEMPT_SIGNAL
    try:
        import submitit
        from submitit.core.job_environment import JobEnvironment
    except ImportError:
        raise UsageError("--launcher slurm needs submitit: pip install submitit") from None
    JobEnvironment.USR_SIG = PREEMPT_SIGNAL
    return submitit


def check_launcher(settings: SlurmSettings) -> None:
    """Before anything is written: submitit importable, and for SLURM its commands on this machine."""
    _submitit()
    if not settings.local and shutil.which("sbatch") is None:
        raise UsageError("--launcher slurm: no sbatch on this machine; run compare on the cluster's login node "
                         "(--dry-run works anywhere; --launcher slurm-local rehearses the jobs here)")


def make_executor(folder: str, settings: SlurmSettings, name: str):
    """submitit's executor for this comparison, its files in ``<folder>/slurm``."""
    submitit = _submitit()
    where = os.path.join(os.path.abspath(folder), "slurm")
    if settings.local:
        ex = submitit.LocalExecutor(folder=where, max_num_timeout=MAX_REQUEUES)
        # The local executor's "time limit" sends the preemption signal too, signal_delay_s before
        # it. No setup lines: with them submitit starts its controller under a shell, which would
        # take a stop signal meant for the controller (and its jobs); the preemption signal's
        # variable reaches the jobs through this process's environment (_submitit).
        ex.update_parameters(timeout_min=settings.time_min, gpus_per_node=settings.gpus_per_job,
                             signal_delay_s=settings.signal_delay_s)
        return ex
    try:
        ex = submitit.SlurmExecutor(folder=where, max_num_timeout=MAX_REQUEUES)
    except RuntimeError as e:     # no srun on this machine
        raise UsageError(f"--launcher slurm: {e} (run compare on the cluster's login node, or --dry-run "
                         "here)") from None
    ex.update_parameters(**settings.parameters(name))
    return ex


def sbatch_script(folder: str, settings: SlurmSettings, name: str, count: int) -> str:
    """The sbatch script of the job array, as submitit writes it for the submission (for
    ``--dry-run``)."""
    _submitit()
    from submitit.slurm.slurm import _make_sbatch_string
    params = settings.parameters(name)
    where = os.path.join(os.path.abspath(folder), "slurm")
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(where)])
    return _make_sbatch_string(command=command, folder=where, map_count=count if count > 1 else None, **params)


class TrainingJob:
    """One run of a comparison as a submitit job: picklable (plain data), callable in the task."""

    def __init__(self, folder: str, job: Job, gpus: int = 1):
        self.folder = os.path.abspath(folder)
        self.job = job
        self.gpus = gpus

    def __call__(self) -> dict[str, Any]:
        import submitit
        env = submitit.JobEnvironment()
        requeue_handler = signal.getsignal(env._usr_sig())     # submitit's: checkpoint() + requeue
        name = self.job.name
        state = run_state(run_folder(self.folder, name))
        launcher = "slurm-local" if os.environ.get("SUBMITIT_EXECUTOR") == "local" else "slurm"
        update_record(self.folder, name, launcher=launcher, job_id=str(env.job_id), status="running",
                      host_gpus=os.environ.get("CUDA_VISIBLE_DEVICES"), code=None)
        if state == "done":
            update_record(self.folder, name, status="done", code=0)
            return {"name": name, "code": 0}
        argv = training_argv(self.folder, self.job, state)
        try:
            code = self._train(argv)
        except BaseException:    # out of memory, a bug: recorded as failed, then submitit's report
            update_record(self.folder, name, status="failed", code=1)
            raise
        update_record(self.folder, name, status=status_of(code), code=code)
        if code == 128 + signal.SIGUSR1 and callable(requeue_handler):
            # The training held SIGUSR1 and stopped at its batch with a checkpoint; now the signal
            # is submitit's to act on: the same job again (checkpoint()), requeued.
            requeue_handler(env._usr_sig(), None)
        if code != 0:
            raise RuntimeError(f"{name}: training exited with {code}"
                               + (" (stopped with a checkpoint: run compare again to resume it)"
                                  if code in STOPPED_CODES else ""))
        return {"name": name, "code": code}

    def _train(self, argv: list[str]) -> int:
        if self.gpus > 1:
            return torchrun.main(["--standalone", f"--nproc_per_node={self.gpus}", "-m", "adautomix_fast.train",
                                  *argv])
        cputhreads.configure()
        return train.main(argv)

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption hook: the checkpoint is the training's own (written before this is
        called, or the run resumes from its previous one); requeue the same job."""
        import submitit
        return submitit.helpers.DelayedSubmission(TrainingJob(self.folder, self.job, self.gpus))


def job_state(folder: str, job_id: str) -> Optional[str]:
    """SLURM's state of a submitted task (PENDING, RUNNING, COMPLETED, ...), None where it cannot
    be read (no sacct/squeue here, or a job SLURM has forgotten)."""
    submitit = _submitit()
    logging.getLogger("submitit").setLevel(logging.ERROR)   # its "no sacct here" warnings: the caller says it
    try:
        state = submitit.SlurmJob(folder=os.path.join(folder, "slurm"), job_id=job_id).state
    except Exception:        # a missing sacct, a forgotten job: unknown, not an error of the comparison
        return None
    return None if not state or state == "UNKNOWN" else str(state).split()[0]


ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED")


class SubmissionError(Exception):
    """sbatch refused the jobs (the message is one line)."""


class JobWatch(SignalScope):
    """While compare waits for its submitted jobs: a stop signal ends the wait. The local
    executor's jobs are stopped too, each at its batch with a checkpoint (the controller passes
    SIGTERM on to its task); SLURM's jobs go on in the cluster."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.jobs: list = []

    def handlers(self) -> dict:
        return {signum: self._stop for signum in FORWARDED_SIGNALS}

    def _stop(self, signum, _frame) -> None:
        self.signum = self.signum or signum
        for job in self.jobs:
            process = getattr(job, "_process", None)     # a LocalJob's controller; None for SLURM's jobs
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        """Until every job has ended or a signal stopped the wait (and, locally, the jobs)."""
        while not all(self._done(job) for job in self.jobs):
            if self.signum is not None and not any(getattr(j, "_process", None) for j in self.jobs):
                return            # SLURM's jobs: stop waiting, they go on
            time.sleep(1.0)

    @staticmethod
    def _done(job) -> bool:
        try:
            return job.done()
        except Exception:        # a job SLURM cannot report on: not waited for
            return True
