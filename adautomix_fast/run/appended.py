"""A run whose method appends images to the training set (run/phase.py): what train.py checks
before training and rebuilds on resume."""

from __future__ import annotations

from typing import Optional

from ..data.appended import check_appended, grown_loader, growth_problem
from ..errors import DataError, UsageError
from ..registry import METHODS
from .phase import epoch_sizes, phase_epochs_of


def restore_appended(cfg, ctx, train_loader, info, resumed: Optional[dict], resume_path: Optional[str]):
    """The training loader to start with: ``train_loader``, or, resuming a run that appended
    images, a loader over the data set followed by them. One-line errors for a method with an
    epoch-start phase in a run that cannot grow its training set."""
    if not hasattr(METHODS[cfg.method], "phase_epochs"):
        return train_loader
    title = METHODS[cfg.method].title
    if ctx.enabled:
        raise UsageError(f"--method {cfg.method} runs in one process: {title}'s generation pass appends images "
                         "to the training set, which is not shared between processes; run without torchrun")
    problem = growth_problem(train_loader)
    if problem is not None:
        raise UsageError(f"--method {cfg.method} appends {title}'s images to the training set, which cannot grow "
                         f"here: {problem}")
    bank = (resumed or {}).get("bank")
    if not bank or bank.get("images") is None:
        return train_loader
    images, labels = bank["images"], bank["labels"]
    wrong = check_appended(images, labels, info.image_size, info.num_classes)
    if wrong is not None:
        raise DataError(f"checkpoint {resume_path} does not fit this training data: {wrong}; resume with the data "
                        "and image size it was trained on")
    return grown_loader(train_loader, images, labels)


def schedule_lengths(model, cfg, info, world_size: int) -> Optional[tuple[int, ...]]:
    """Each epoch's steps when the method's phases grow the training set (None otherwise): the
    loader's batches of the set's size in that epoch (``TrainBatchSampler``'s count)."""
    if not phase_epochs_of(model, cfg.epochs):
        return None
    return tuple((size // world_size) // cfg.batch_size for size in epoch_sizes(model, info.train_size, cfg.epochs))


__all__ = ["restore_appended", "schedule_lengths"]
