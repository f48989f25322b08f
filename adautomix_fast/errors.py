"""User-facing errors.

A `UsageError` is a mistake the user can fix (a missing data folder, an impossible flag
combination, a checkpoint from another configuration). The CLI prints its message as one line
and exits with status 2, like argparse does for bad flags. Library code raises it instead of
asserting, so the message always names the problem and the fix.
"""


class UsageError(Exception):
    """A problem with the user's input; the message names the problem and the fix."""

    exit_code = 2


class DataError(UsageError):
    """The data set is missing, empty or unreadable (the message names the path)."""


class CompiledStepError(RuntimeError):
    """The compiled (fused) step failed: the message names the step, the torch version and the
    fallback (``--impl reference``). Not the user's input, so the CLI exits with status 1."""

    exit_code = 1


class RunDiverged(RuntimeError):
    """Training produced a non-finite loss or non-finite weights. The message names the last
    finite checkpoint, which was kept, and how to resume from it with a lower learning rate."""

    exit_code = 1


class RunStopped(Exception):
    """The run stopped on request (SIGTERM/SIGUSR1 for preemption, Ctrl-C) after saving what it
    could; the message says which checkpoint is kept. Exit status 128 + the signal's number, as
    a shell reports a process ended by that signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
