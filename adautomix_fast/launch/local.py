"""``compare --gpus 0,1,2,3``: the runs of a comparison on this machine's GPUs, one run per GPU at
a time and as many at once as there are GPUs, each pinned with ``CUDA_VISIBLE_DEVICES``.

Each training is a child process in a session of its own (a terminal's Ctrl-C reaches it once,
from here), its output in ``<folder>/logs/<run>.log``. A stop signal for compare (SIGTERM,
SIGUSR1, SIGINT; SIGHUP and SIGQUIT passed on as SIGTERM) reaches every training in progress,
which stops at its batch with a checkpoint as it would alone; no further run starts. A second
signal ends them at once (their last complete checkpoints are kept). A run that fails is reported
and the others go on. Ctrl-Z is not passed on (the trainings are not in the terminal's process
group). Without ``--gpus``, compare trains one run after another in its own terminal
(``compare.Trainings``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..errors import UsageError
from ..runtime.stopsignals import SIGNALS_FORWARDED_ENV, exit_status

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
POLL_S = 0.2


# The signals a training stops on with a checkpoint; SIGHUP and SIGQUIT are passed on as SIGTERM.
TRAINING_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def for_training(signum: int) -> int:
    """The signal a training receives for one that compare received."""
    return signum if signum in TRAINING_SIGNALS else signal.SIGTERM


def parse_gpus(text: str) -> list[str]:
    """``--gpus``: "all" (every GPU this process sees) or a comma list of indices among them, as
    the ``CUDA_VISIBLE_DEVICES`` values that pin a training to each (this process's own
    ``CUDA_VISIBLE_DEVICES`` respected: index 0 is the first GPU it lists). On a machine without a
    visible GPU an explicit list only pins a variable (the runs train on the CPU, one per index at
    once), which is how the scheduler is tried out there."""
    count = visible_gpu_count()
    if text.strip() == "all":
        if count == 0:
            raise UsageError("--gpus all: no CUDA GPU is visible on this machine; drop --gpus to train one run after "
                             "another on the CPU, or run where the GPUs are")
        indices = list(range(count))
    else:
        parts = [p.strip() for p in text.split(",")]
        if not all(re.fullmatch(r"\d+", p) for p in parts):
            raise UsageError(f"--gpus {text!r}: expected a comma list of GPU indices (e.g. --gpus 0,1,2,3) or 'all'")
        indices = [int(p) for p in parts]
        if len(set(indices)) != len(indices):
            raise UsageError(f"--gpus {text!r} lists a GPU twice; each GPU trains one run at a time")
        if count and max(indices) >= count:
            raise UsageError(f"--gpus {text!r}: this machine shows {count} GPU{'s' * (count != 1)} (indices 0 to "
                             f"{count - 1}); --gpus all takes every one")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if count and len(visible) >= count:       # the parent's own mask: index i is its i-th entry
        return [visible[i] for i in indices]
    return [str(i) for i in indices]


def visible_gpu_count() -> int:
    """The GPUs this process may use (``CUDA_VISIBLE_DEVICES`` respected), without a CUDA context."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_env(device: str) -> dict[str, str]:
    """The environment of a training pinned to ``device``: that GPU alone, as its device 0; the
    parent passes its signals on (a scheduler's signal that reaches both is one request)."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": device, SIGNALS_FORWARDED_ENV: "1"}


class SignalScope:
    """Within a ``with`` block, the handlers of ``handlers()`` replace the previous ones, restored
    on leaving it (installed from the main thread only: Python runs handlers there alone)."""

    def handlers(self) -> dict[int, Callable]:
        raise NotImplementedError

    def __enter__(self):
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self.handlers().items():
                self._previous[signum] = signal.signal(signum, handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


@dataclass
class Task:
    """One training to run: its run's name, a label for the console, its command line."""
    name: str
    label: str
    cmd: list[str]
    device: Optional[str] = None
    started: Optional[float] = None
    process: Optional[subprocess.Popen] = field(default=None, repr=False)


class DeviceScheduler(SignalScope):
    """Runs tasks on a list of devices, at most one task per device at once."""

    def __init__(self, devices: list[str], logs: str):
        self.devices = list(devices)
        self.logs = logs
        self.signum: Optional[int] = None    # the first stop signal received
        self.killed = False
        self._stop_starting = False
        self._running: list[Task] = []

    def handlers(self) -> dict[int, Callable]:
        return {signum: self._forward for signum in FORWARDED_SIGNALS}

    def _forward(self, signum, _frame) -> None:
        if self.signum is not None:
            os.write(2, f"\n{signal.Signals(signum).name} again while stopping: ending every training now; their last "
                        "complete checkpoints are kept\n".encode())
            self.killed = True
            for task in list(self._running):
                self._signal_group(task, signal.SIGKILL)
            return
        self.signum = signum
        for task in list(self._running):
            self._send(task, signum)

    @staticmethod
    def _send(task: Task, signum: int) -> None:
        try:
            task.process.send_signal(for_training(signum))
        except ProcessLookupError:
            pass

    @staticmethod
    def _signal_group(task: Task, signum: int) -> None:
        if task.process is not None and task.process.returncode is None:
            try:
                os.killpg(task.process.pid, signum)   # the training and its data workers
            except ProcessLookupError:
                pass

    # -- running
    def _start(self, task: Task, device: str) -> None:
        os.makedirs(self.logs, exist_ok=True)
        log = open(os.path.join(self.logs, f"{task.name}.log"), "ab")
        try:
            task.process = subprocess.Popen(task.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=gpu_env(device))
        finally:
            log.close()                       # the child holds its own descriptor
        task.device, task.started = device, time.time()
        self._running.append(task)
        if self.signum is not None:      # arrived while the child was being started: its copy
            self._send(task, self.signum)

    def stop_starting(self) -> None:
        """Start no further task (those running go on)."""
        self._stop_starting = True

    def run(self, tasks: list[Task], on_start: Callable[[Task], None],
            on_finish: Callable[[Task, int], None]) -> Optional[int]:
        """Run every task (in order, each on the first free device); ``on_start`` when one starts,
        ``on_finish(task, status)`` when one ends (status 128 + N for a child ended by signal N).
        Returns the stop signal's number when a signal stopped the tasks, else None."""
        pending = list(tasks)
        try:
            while pending or self._running:
                busy = {t.device for t in self._running}
                while pending and self.signum is None and not self._stop_starting:
                    free = [d for d in self.devices if d not in busy]
                    if not free:
                        break
                    task = pending.pop(0)
                    self._start(task, free[0])
                    busy.add(free[0])
                    on_start(task)
                if self.signum is not None or self._stop_starting:
                    pending.clear()
                for task in [t for t in self._running if t.process.poll() is not None]:
                    self._running.remove(task)
                    code = task.process.returncode
                    status = exit_status(-code) if code < 0 else code
                    if self.killed and self.signum is not None:
                        status = exit_status(self.signum)
                    on_finish(task, status)
                time.sleep(POLL_S)
        finally:
            # An error here (a report that could not be written, ...) must not orphan the
            # trainings: they stop at their batch with a checkpoint.
            for task in list(self._running):
                self._send(task, signal.SIGTERM)
                task.process.wait()
        return self.signum


def python_train() -> list[str]:
    return [sys.executable, "-m", "adautomix_fast.train"]
