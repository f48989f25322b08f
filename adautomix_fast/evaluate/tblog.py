"""The optional ``--tensorboard`` log: every numeric field of every record the run logs.

The trainer writes records to log.jsonl (``{"type": "train", "step": ..., "loss": ..., ...}`` every
log interval, ``{"type": "epoch", ...}`` every epoch); handing the same dicts to
``ScalarLogger.log`` mirrors them into TensorBoard (``torch.utils.tensorboard``), tagged
``<type>/<field>``, at the record's step. It runs where the records are made, at the log interval,
so it adds nothing to the steps in between. Primary rank only.
"""

from __future__ import annotations

import numbers
from typing import Optional

from ..errors import UsageError

SKIP = ("step", "type")   # the x-axis and the tag prefix, not scalars


class ScalarLogger:
    """``log(record, step)`` writes every numeric field of ``record`` as a scalar; ``close()``."""

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:   # torch's writer needs the tensorboard package
            raise UsageError(f"--tensorboard needs the tensorboard package ({e}); pip install tensorboard") from None
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=log_dir)

    @staticmethod
    def scalars(record: dict) -> dict[str, float]:
        """The numeric fields of a record (bools as 0/1, 0-dim tensors read), tagged <type>/<key>."""
        prefix = f"{record['type']}/" if isinstance(record.get("type"), str) else ""
        out = {}
        for key, value in record.items():
            if key in SKIP:
                continue
            if hasattr(value, "dim") and hasattr(value, "item") and value.dim() == 0:
                value = value.item()
            if isinstance(value, numbers.Real):
                out[prefix + key] = float(value)
        return out

    def log(self, record: dict, step: Optional[int] = None) -> int:
        """Write every numeric field at ``step`` (default: the record's own ``step``). Returns the
        number of scalars written. Non-finite values are written too (TensorBoard shows them)."""
        step = record.get("step") if step is None else step
        values = self.scalars(record)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        return len(values)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "ScalarLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["ScalarLogger"]
