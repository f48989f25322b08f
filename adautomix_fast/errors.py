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
