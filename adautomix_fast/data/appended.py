"""Images a method appends to the training set while it trains (ME-ADA's adversarial images):
the grown training split, the training loader over it, and the plain pass over it.

The appended images are uint8 ``[M, S, S, 3]`` arrays like the in-memory splits' (CIFAR, digits,
folders of small images), at the training size S (the evaluation transform's output, from which
they were made: the data set's own size unless ``--img-size`` resizes it), labelled, and join the
end of the split: item ``i < N`` is the data set's, item ``N + j`` the j-th appended image. They
load, and are augmented, as the data set's own images are (the small-image transforms' resize to
S leaves an S-px image as it is); the order and the augmentation stay functions of (seed, epoch,
index) over the grown set, so a run resumed with the same appended images sees the same batches.

Only the torch backend over an in-memory split grows (``growth_problem`` says why another cannot):
appending to a DALI pipeline or to a folder of files would mean writing image files.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Sampler

from .arrays import ArraySplit
from .sampling import EpochLoader, SeededDataset, TrainBatchSampler


def base_split(loader) -> Optional[ArraySplit]:
    """The data set's own training split under a torch training loader (None for another loader)."""
    dataset = getattr(loader, "dataset", None)
    source = getattr(dataset, "base", getattr(dataset, "source", None))
    return source if isinstance(source, ArraySplit) else None


def growth_problem(loader) -> Optional[str]:
    """Why images cannot be appended to this training loader's set, as a phrase, or None."""
    if not isinstance(loader, EpochLoader):
        return "it reads the data through DALI (use --data-backend torch)"
    if base_split(loader) is None:
        return ("its images are files read at every epoch; it needs a data set decoded into memory (digits, "
                "CIFAR, a folder of images of at most 64 px)")
    return None


def check_appended(images: torch.Tensor, labels: torch.Tensor, image_size: int, num_classes: int) -> Optional[str]:
    """Why ``images``/``labels`` (a checkpoint's) cannot be appended to a set trained at
    ``image_size`` px, or None."""
    want = (image_size, image_size, 3)
    if tuple(images.shape[1:]) != want or images.dtype != torch.uint8:
        return f"its appended images are {tuple(images.shape[1:])} {images.dtype}, this run trains on {want} uint8"
    if images.shape[0] != labels.shape[0]:
        return f"it holds {images.shape[0]} appended images but {labels.shape[0]} labels"
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        return f"its appended labels reach {int(labels.max())}, the data set has {num_classes} classes"
    return None


def grown_split(base: ArraySplit, images: torch.Tensor, labels: torch.Tensor) -> ConcatDataset:
    """``base`` followed by the appended images (uint8 [M,S,S,3]) and labels."""
    return ConcatDataset([base, ArraySplit(images.numpy(), labels.numpy().astype(np.int64))])


def grown_loader(loader: EpochLoader, images: torch.Tensor, labels: torch.Tensor) -> EpochLoader:
    """A training loader like ``loader`` (transform, batch size, seed, ranks, workers) over its
    data set's split followed by the appended images (all of them: the caller's, not added to
    what ``loader`` already appended)."""
    base = base_split(loader)
    split = grown_split(base, images, labels)
    sampler = loader.batch_sampler
    dataset = SeededDataset(split, loader.dataset.transform, loader.dataset.skip_corrupt)
    dataset.base = base
    grown = EpochLoader(dataset, TrainBatchSampler(len(split), sampler.batch_size, seed=sampler.seed,
                                                   rank=sampler.rank, world_size=sampler.world_size),
                        **loader.options)
    grown.plain_transform = loader.plain_transform
    return grown


class RangeBatchSampler(Sampler):
    """In-order batches of ``(index, None)`` keys over items ``start..stop-1`` (the evaluation
    transform: no random draw)."""

    def __init__(self, start: int, stop: int, batch_size: int):
        self.start, self.stop, self.batch_size = start, stop, batch_size

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, None]]]:
        for b in range(self.start, self.stop, self.batch_size):
            yield [(i, None) for i in range(b, min(b + self.batch_size, self.stop))]


def plain_loader(loader: EpochLoader, batch_size: int, start: int = 0) -> EpochLoader:
    """The training loader's current set (its data set's images and any appended) from item
    ``start`` to the end, in order, through the evaluation transform (no crop, flip or policy)."""
    dataset = SeededDataset(loader.dataset.source, loader.plain_transform, loader.dataset.skip_corrupt)
    return EpochLoader(dataset, RangeBatchSampler(start, len(dataset), batch_size), **loader.options)


__all__ = ["base_split", "check_appended", "growth_problem", "grown_loader", "grown_split", "plain_loader"]
