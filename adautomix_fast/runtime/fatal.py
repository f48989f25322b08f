"""A one-line message when the process dies in native code while a compiled step runs.

A failure inside code that torch.compile generated is not always a Python exception: a failed
bounds check in an OpenMP region of an Inductor C++ kernel aborts the process (SIGABRT), a bad
write crashes it (SIGSEGV). The C++ extension's handlers (``csrc/fatal_message.cpp``) then write
the message set here, naming the step, the torch version and the fallback, before the process
dies as it would have. Without the extension nothing is installed and the process dies as
before (``available()`` says which).
"""

from __future__ import annotations

import contextlib

import torch

from ..step import ema  # noqa: F401  (imports adautomix_fast._C, which registers the ops)


def available() -> bool:
    """Whether the extension's handlers exist in this process."""
    try:
        torch.ops.adautomix_fast.set_fatal_message
    except (AttributeError, RuntimeError):
        return False
    return True


_AVAILABLE = available()


def set_message(text: str) -> None:
    """The line written if the process dies while armed (one line: newlines become spaces)."""
    if _AVAILABLE:
        torch.ops.adautomix_fast.set_fatal_message(" ".join(text.split()))


@contextlib.contextmanager
def armed():
    """Inside, a fatal signal writes the message first."""
    if not _AVAILABLE:
        yield
        return
    torch.ops.adautomix_fast.arm_fatal_message(True)
    try:
        yield
    finally:
        torch.ops.adautomix_fast.arm_fatal_message(False)
