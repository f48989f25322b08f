"""`--device auto|cpu|cuda|cuda:N` -> a torch.device, shared by training, evaluation and bench/."""

from __future__ import annotations

import torch

from ..errors import UsageError


def pick_device(name: str) -> torch.device:
    """auto -> cuda when torch sees a GPU, else cpu; an impossible request is a one-line UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but torch sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return dev
