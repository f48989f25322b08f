"""What identifies a training set, so that a resumed run can tell that its data changed.

A checkpoint records the training split's size and a fingerprint; resuming compares them with
the data set found now. The data order and augmentation are functions of (seed, epoch, image
index), so a resume is exact only on the same images in the same order: other data makes the
saved position (epoch, batch) point at other images, or past the end of the epoch.

The fingerprint must cost little next to a run's start-up, so image files are never read:

* in-memory sets (digits, CIFAR): a hash of the image and label arrays (CIFAR-10: 150 MB,
  about 0.15 s);
* file sets (image folders, the fine-grained readers): a hash of each file's path relative to
  the split's common folder, its size and its label, in the reader's (sorted) order. Relative
  paths let the same data set move to another mount point or machine; sizes catch a file
  replaced by another of the same name. One ``stat`` per file: about 2 s for ImageNet's 1.28M
  on a local disk, in parallel threads where stat is slow (a network file system).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from ..errors import DataError

_CHUNK = 4096
_SLOW_STAT_S = 20e-6   # per file: slower than a local disk's stat, so threads overlap the waits


def _sizes(paths: list[str]) -> list[int]:
    """Each file's size (-1 for one that vanished: it still changes the fingerprint)."""
    def sizes(part: list[str]) -> list[int]:
        out = []
        for p in part:
            try:
                out.append(os.stat(p).st_size)
            except OSError:
                out.append(-1)
        return out

    t0 = time.perf_counter()
    first = sizes(paths[:_CHUNK])
    rest = paths[_CHUNK:]
    if not rest:
        return first
    if time.perf_counter() - t0 < _SLOW_STAT_S * len(first):
        return first + sizes(rest)   # local disk: one thread is fastest (no lock contention)
    chunks = [rest[i:i + _CHUNK] for i in range(0, len(rest), _CHUNK)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return first + [s for part in pool.map(sizes, chunks) for s in part]


def _common_folder(paths: list[str]) -> str:
    lo, hi = min(paths), max(paths)
    prefix = os.path.commonprefix([lo, hi])   # of the extremes = of all (string order)
    return prefix[:prefix.rfind(os.sep) + 1] if os.sep in prefix else ""


def split_fingerprint(split) -> Optional[str]:
    """16 hex digits identifying ``split`` (an ArraySplit or FolderSplit); None for a split of
    another kind (nothing to compare)."""
    h = hashlib.sha256()
    if hasattr(split, "images") and hasattr(split, "labels"):
        images = np.ascontiguousarray(split.images)
        labels = np.ascontiguousarray(split.labels, dtype=np.int64)
        h.update(f"arrays {images.shape} {images.dtype.str} {labels.shape}\n".encode())
        h.update(images)
        h.update(labels)
        return h.hexdigest()[:16]
    samples = getattr(split, "samples", None)
    if samples is None:
        return None
    paths = [os.fspath(p) for p, _ in samples]
    base = _common_folder(paths) if paths else ""
    h.update(f"files {len(paths)}\n".encode())
    for (path, label), size in zip(samples, _sizes(paths)):
        h.update(f"{os.fspath(path)[len(base):]}\0{size}\0{int(label)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def describe_data_change(checkpoint: dict, train_size: int, fingerprint: Optional[str]) -> Optional[str]:
    """How the training set a checkpoint recorded differs from the one found now, as a phrase;
    None when they agree, or when the checkpoint recorded none (written before it did)."""
    saved_size, saved_print = checkpoint.get("train_size"), checkpoint.get("train_fingerprint")
    if saved_size is None or saved_print is None or fingerprint is None:
        return None
    if int(saved_size) != train_size:
        return f"it was trained on {saved_size} training images, the data set now holds {train_size}"
    if saved_print != fingerprint:
        return (f"it was trained on {saved_size} training images with fingerprint {saved_print}, the data set "
                f"now holds {train_size} with fingerprint {fingerprint} (files renamed, replaced or relabelled)")
    return None


def check_resume_data(checkpoint: dict, path: str, info, batches_per_epoch: int, world_size: int,
                      allow: bool) -> list[str]:
    """Refuse (DataError, one line) to resume ``checkpoint`` on a training set other than the
    one it recorded, or at a mid-epoch batch this run's epochs no longer reach (a checkpoint
    without a fingerprint, or another number of processes). With ``allow`` (the user's
    ``--allow-data-change``): the notes to print instead, and such a batch becomes 0 in
    ``checkpoint`` (the interrupted epoch restarts)."""
    change = describe_data_change(checkpoint, info.train_size, getattr(info, "train_fingerprint", None))
    at_batch = int(checkpoint.get("batch_in_epoch", 0))
    beyond = at_batch > batches_per_epoch
    if beyond and change is None:
        saved_world = checkpoint.get("world_size")
        why = (f"{saved_world} processes wrote it, {world_size} resume it" if saved_world not in (None, world_size)
               else "the training set changed")
        change = (f"it stopped after batch {at_batch} of epoch {int(checkpoint['epoch']) + 1} and this run's epochs "
                  f"have {batches_per_epoch} batch{'es' if batches_per_epoch != 1 else ''} ({why})")
    if change is None:
        return []
    if not allow:
        raise DataError(f"checkpoint {path} does not fit this training data: {change}; resume with the data it was "
                        "trained on, or pass --allow-data-change to continue on this data")
    notes = [f"{change}; continuing on this data (--allow-data-change), not bit for bit"]
    if beyond:
        notes.append(f"the interrupted epoch {int(checkpoint['epoch']) + 1} restarts from its first batch")
        checkpoint["batch_in_epoch"] = 0
    return notes
