"""``--train-subset N``: a fixed, class-balanced subset of the training split.

Comparisons on a small budget (every method, several seeds) must train on the same images, so
the choice depends on the data set's name and its labels only, never on ``--seed`` or the
method: a generator seeded by a hash of the data set's name draws, class by class in index
order, one permutation of each class's images. Class ``c`` keeps the first ``quota[c]`` images
of its permutation, in the split's own order. The permutations do not depend on ``N``, so a
smaller subset is contained in a larger one (1,000 images of CIFAR-10 are among its 2,000).

Quotas: ``floor(N / C)`` per class, the remainder one more each to the first classes in index
order; a class with fewer images than its quota gives all it has, and what it lacks goes to the
others in the same way.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from ..errors import DataError

_TAG = b"adautomix_fast train subset\0"


def subset_key(dataset: str) -> int:
    """The generator seed of ``dataset``'s subsets: 64 bits of a SHA-256 (stable across runs,
    machines and Python's hash randomisation)."""
    return int.from_bytes(hashlib.sha256(_TAG + dataset.encode()).digest()[:8], "little")


def quotas(n: int, counts: Sequence[int]) -> list[int]:
    """Images per class: ``floor(n / C)`` each and the remainder one each to the first classes,
    where every class has enough; a class with fewer images than the even share gives all it
    has, and the others share the rest the same way (as evenly as the counts allow)."""
    quota = [0] * len(counts)
    open_ = list(range(len(counts)))
    left = n
    while open_:
        share = left // len(open_)
        capped = [i for i in open_ if counts[i] <= share]
        if not capped:
            break
        for i in capped:
            quota[i] = counts[i]
            left -= counts[i]
        open_ = [i for i in open_ if counts[i] > share]
    if open_:
        share, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            quota[i] = share + (1 if rank < extra else 0)
    return quota


def balanced_subset(labels, n: int, dataset: str, where: str) -> np.ndarray:
    """Sorted indices of ``n`` images of ``labels``, class-balanced (see the module docstring).

    A one-line DataError when ``n`` exceeds the split or is smaller than its number of classes
    (a subset must hold every class)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    if n > len(labels):
        raise DataError(f"--train-subset {n} is larger than the {len(labels)} training images of {where}; "
                        f"use --train-subset {len(labels)} or less")
    if n < len(classes):
        raise DataError(f"--train-subset {n} is smaller than the {len(classes)} classes of {where} (a class-balanced "
                        f"subset holds every class); use --train-subset {len(classes)} or more")
    members = [np.flatnonzero(labels == c) for c in classes]
    quota = quotas(n, [len(m) for m in members])
    rng = np.random.Generator(np.random.PCG64(subset_key(dataset)))
    chosen = [m[np.sort(rng.permutation(len(m))[:q])] for m, q in zip(members, quota)]
    return np.sort(np.concatenate(chosen))
