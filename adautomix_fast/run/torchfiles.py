"""Why a file did not load with ``torch.load(weights_only=True)``, in words a user can act on.

torch's own messages name its internals ("invalid load key", "101", "pop from empty list") and
end with advice to retry with ``weights_only=False``, which would run whatever code a pickled
file holds: no file this engine reads needs that. The kind of file is read from its first bytes
instead: a zip archive (what ``torch.save`` writes) that fails is damaged or truncated; a pickle
that fails holds objects other than tensors and plain containers; anything else is not a torch
file at all (a text file, an image, ...).
"""

from __future__ import annotations

import os
import pickle
import re

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"     # the PROTO opcode that starts every pickle of protocol 2 and later


def _kind(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(PICKLE_PROTO):
        return "pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "binary"


def load_failure(path: str, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``exc``: one clause, no retry advice."""
    kind = _kind(path)
    if kind == "empty":
        return "an empty file (0 bytes), not a torch file"
    if kind in ("text", "binary"):
        size = os.path.getsize(path)
        return f"a {kind} file of {size} bytes, not a torch file (torch.save writes a zip archive)"
    if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in str(exc).lower():
        named = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
        what = f" ({named.group(1)})" if named else ""
        return (f"a pickle holding objects other than tensors, numbers, strings, lists and dicts{what}; loading "
                "it could run code it carries, so it was not loaded")
    if kind == "zip":
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return f"a damaged or truncated torch file ({first[:160]})"
    return f"not a loadable torch file ({type(exc).__name__})"


__all__ = ["load_failure"]
