"""Every schedule of a run as a pure function of the global step (host side).

The learning rates (cosine with mmcv's linear warm-up), the EMA teacher's momentum, and the
``Schedule`` that evaluates them for a run's configuration. Methods with schedules of their own
(AutoMix's mask-loss weight) declare them as ``MixModel.schedule_values``, which the steps call
with the same global step; a resumed run continues every schedule exactly because each is a
function of the step alone.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional


def cosine_lr(base: float, final: float, progress: float) -> float:
    """Cosine annealing from ``base`` (progress 0) to ``final`` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return final + (base - final) * (1.0 + math.cos(math.pi * progress)) / 2.0


def warmup_factor(step: int, warmup_steps: int, warmup_ratio: float) -> float:
    """mmcv's linear warm-up: ``1 - (1 - step / W) * (1 - ratio)`` for step < W, then 1.

    It multiplies the regular (cosine) learning rate: the first step runs at ``ratio`` times it,
    and the rate joins the cosine continuously at step W (the released ``warmup='linear'``,
    ``warmup_ratio=1e-5``, ``warmup_by_epoch=True``)."""
    if step >= warmup_steps:
        return 1.0
    return 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)


def warmup_cosine_lr(step: int, total_steps: int, base: float, final: float, warmup_steps: int = 0,
                     warmup_ratio: float = 1e-5, steps_per_epoch: Optional[int] = None) -> float:
    """Learning rate of global step ``step`` (0-based): cosine from ``base`` to ``final`` over the
    whole run, per step (or per epoch when ``steps_per_epoch`` is given: epoch e uses progress
    e / epochs, the released ``by_epoch=True``), times the linear warm-up factor."""
    total_steps = max(int(total_steps), 1)
    if steps_per_epoch:
        epochs = max(total_steps // steps_per_epoch, 1)
        progress = (step // steps_per_epoch) / epochs
    else:
        progress = step / total_steps
    return cosine_lr(base, final, progress) * warmup_factor(step, warmup_steps, warmup_ratio)


def ema_momentum(step: int, total_steps: int, start: float = 0.999, end: float = 0.999999,
                 warmup: float = 0.1) -> float:
    """Momentum used after optimizer step ``step`` (0-based) of a run of ``total_steps``.

    Constant ``start`` while step < warmup * total_steps, then
    m = end - (end - start) * (cos(pi * step / total_steps) + 1) / 2.
    """
    total_steps = max(int(total_steps), 1)
    if step < warmup * total_steps:
        return float(start)
    return float(end - (end - start) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0)


@dataclass
class Schedule:
    """Learning rates and EMA momentum as functions of the global step.

    The released ResNet configs anneal the learning rate once per epoch (mmcv ``by_epoch=True``):
    epoch e uses progress e / epochs. ``lr_per_step`` anneals every step instead (the transformer
    recipes). ``warmup_epochs`` > 0 multiplies the first ``warmup_steps`` by mmcv's linear warm-up
    factor (``warmup_factor``: ``warmup_ratio`` at step 0, joining the cosine continuously); the
    factor is exactly 1 afterwards and without warm-up, so the SGD presets' learning rates are
    exactly the plain cosine's floats. ``cfg``: the run configuration (any object with its
    fields).

    ``epoch_lengths``: the steps of each epoch when they differ (a method whose training set grows
    at epoch starts, run/phase.py); per-epoch annealing then uses the epoch a step lies in, per-step
    annealing the step over the run's total, and the warm-up counts ``warmup_epochs`` of the
    epochs as they are.
    """

    cfg: object
    steps_per_epoch: int
    epoch_lengths: Optional[tuple[int, ...]] = None

    @cached_property
    def epoch_starts(self) -> list[int]:
        """The global step at which each epoch starts, and the run's end."""
        lengths = self.epoch_lengths or (self.steps_per_epoch,) * self.cfg.epochs
        return [0, *itertools.accumulate(lengths)]

    @property
    def total_steps(self) -> int:
        if self.epoch_lengths is not None:
            return self.epoch_starts[-1]
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        if self.epoch_lengths is None:
            return int(round(self.cfg.warmup_epochs * self.steps_per_epoch))
        whole = min(int(self.cfg.warmup_epochs), len(self.epoch_lengths))
        part = self.cfg.warmup_epochs - whole
        within = part * self.epoch_lengths[whole] if whole < len(self.epoch_lengths) else 0.0
        return int(round(self.epoch_starts[whole] + within))

    def epoch_of(self, step: int) -> int:
        """The 0-based epoch global step ``step`` lies in."""
        if self.epoch_lengths is None:
            return step // self.steps_per_epoch
        return bisect.bisect_right(self.epoch_starts, step) - 1

    def progress(self, step: int) -> float:
        if self.cfg.lr_per_step:
            return step / max(self.total_steps, 1)
        return self.epoch_of(step) / self.cfg.epochs

    def lrs(self, step: int) -> tuple[float, float]:
        """(student lr, generator lr) for global step ``step``."""
        p = self.progress(step)
        warm = warmup_factor(step, self.warmup_steps, self.cfg.warmup_ratio)
        lr = cosine_lr(self.cfg.lr, self.cfg.min_lr, p) * warm
        if self.cfg.gen_lr is None:
            return lr, lr
        gen_min = self.cfg.gen_min_lr if self.cfg.gen_min_lr is not None else self.cfg.min_lr
        return lr, cosine_lr(self.cfg.gen_lr, gen_min, p) * warm

    def ema(self, step: int) -> float:
        return ema_momentum(step, self.total_steps, self.cfg.ema_start, self.cfg.ema_end, self.cfg.ema_warmup)


__all__ = ["Schedule", "cosine_lr", "ema_momentum", "warmup_cosine_lr", "warmup_factor"]
