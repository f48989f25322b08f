"""SIGTERM, SIGUSR1 and Ctrl-C during training: finish the step, checkpoint at that batch, exit.

Schedulers send SIGTERM or SIGUSR1 before they preempt a job (SLURM: SIGTERM, or the signal
named by ``--signal``, some grace period before SIGKILL; Kubernetes: SIGTERM, then SIGKILL after
``terminationGracePeriodSeconds``); a terminal sends SIGINT (Ctrl-C) to the whole process group.
The handler only records the request; the training loop checks it between steps, so the step
in flight completes and the checkpoint is written at an exact batch (resume continues from there
bit for bit). A second signal while stopping exits at once with the same status: the last
checkpoint on disk is complete (checkpoints are written to a temporary file and renamed), and a
half-written temporary file is removed on the next start. Under torchrun a repeat is ignored: a
scheduler signals the agent and the workers alike, and the agent forwards its signal to the
workers, so each worker sees it twice; the agent kills workers that outlast its own grace period.

Ctrl-C is a request like the others rather than Python's KeyboardInterrupt, which is raised
wherever the main thread happens to run Python code when the handler runs: inside a ``__del__``
(torch frees every batch received from a DataLoader worker through one,
``StorageWeakRef.__del__``) Python prints "Exception ignored" and carries on, and the run
trains on as if no key had been pressed. A flag cannot be lost that way. Before the loop's
first step has returned (start-up, and the first call, which compiles a fused step for minutes)
Ctrl-C stays a KeyboardInterrupt, which ends that work at once.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# What stops a training loop: a scheduler's signals and a terminal's Ctrl-C.
TRAINING_STOP_SIGNALS = (*STOP_SIGNALS, signal.SIGINT)
# Set by a parent that passes its signals on to this process (compare): a scheduler that signals
# every process of a job then reaches this one twice, so a repeat is a copy, not a second request.
SIGNALS_FORWARDED_ENV = "ADAUTOMIX_SIGNALS_FORWARDED"


def repeats_are_copies() -> bool:
    """Whether a repeated stop signal is the same request arriving twice (under torchrun's agent
    or a forwarding parent) rather than a user's "exit now"."""
    return os.environ.get(SIGNALS_FORWARDED_ENV) == "1" or "TORCHELASTIC_RUN_ID" in os.environ


def exit_status(signum: int) -> int:
    """128 + the signal's number, what a shell reports for a process ended by that signal
    (SIGTERM: 143, SIGUSR1: 138), so that job scripts can tell a preempted run from a failed one."""
    return 128 + int(signum)


class StopRequest:
    """Context manager: while active, SIGTERM/SIGUSR1/SIGINT set ``signum`` instead of ending
    the process. Installs nothing outside the main thread (Python delivers signals there only)."""

    def __init__(self, repeat_exits: bool = True, signals: tuple[int, ...] = TRAINING_STOP_SIGNALS):
        self.signum: Optional[int] = None
        self.repeat_exits = repeat_exits
        self.signals = signals
        # Ctrl-C raises KeyboardInterrupt while this is set (nothing worth a checkpoint yet).
        self.interrupt_immediately = False
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.interrupt_immediately and self.signum is None:
            raise KeyboardInterrupt
        if self.signum is not None:
            if not self.repeat_exits:
                return
            os.write(2, f"\n{signal.Signals(signum).name} again while stopping: exiting now; the last complete "
                        "checkpoint on disk is kept\n".encode())
            os._exit(exit_status(self.signum))
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


__all__ = ["SIGNALS_FORWARDED_ENV", "STOP_SIGNALS", "TRAINING_STOP_SIGNALS", "StopRequest", "exit_status",
           "repeats_are_copies"]
