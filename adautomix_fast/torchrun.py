"""``python -m adautomix_fast.torchrun``: torchrun whose exit status says how the workers ended.

    python -m adautomix_fast.torchrun --standalone --nproc_per_node=8 -m adautomix_fast.train --resume RUN ...
    [ $? -eq 138 ] && scontrol requeue $SLURM_JOB_ID

It is torchrun (``torch.distributed.run``, every flag the same), run in this process, with three
differences that let a job script tell a preempted run from a failed one, as it can for a single
process:

* A stop signal that reaches the agent is passed on to the workers, as torchrun does; once they
  have stopped (after the step they agreed on, rank 0 having written the checkpoint), the exit
  status is 128 + the signal's number (SIGTERM: 143, SIGUSR1: 138, Ctrl-C: 130) instead of
  torchrun's 1 and its ``SignalException`` traceback.
* SIGUSR1 (what ``#SBATCH --signal=USR1@...`` sends) is one of those signals. torchrun's default
  list leaves it out, and the signal then ends the agent at once while its workers run on.
* When workers fail, the status is the first failed worker's (2: bad input, 1: a failed run)
  instead of 1 for all, after torchrun's report of the failure.

Workers still running when torchrun's ``--shutdown-timeout`` (default 30 s) has passed are
killed; their run keeps its last complete checkpoint and the status is still 128 + the signal's.

Why in this process rather than torchrun as a child: a scheduler that signals every process of
the job (SLURM, systemd) would reach a child torchrun twice, once directly and once forwarded, and
torchrun's agent takes a second signal as an order to give up waiting for its workers.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Optional

from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.run import parse_args, run as torchrun

from .runtime.stopsignals import exit_status


def _stop_agent(signum, _frame) -> None:
    """What torchrun does on SIGTERM: the agent raises, signals its workers with the same signal
    and waits for them."""
    raise SignalException(f"Process {os.getpid()} got signal: {signal.Signals(signum).name}",
                          sigval=signal.Signals(signum))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)            # torchrun's own flags (a usage error exits 2 here)
    # torchrun installs its handlers (SIGTERM, SIGINT, SIGHUP, SIGQUIT, or --signals-to-handle)
    # when it starts the workers and leaves SIGUSR1 alone; SIGUSR1's default would end the agent.
    signal.signal(signal.SIGUSR1, _stop_agent)
    try:
        record(torchrun)(args)
    except SignalException as e:
        return exit_status(e.sigval)
    except ChildFailedError as e:
        print(e, file=sys.stderr)      # torchrun's report, without a traceback of this process
        code = e.get_first_failure()[1].exitcode
        return exit_status(-code) if code < 0 else code or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
