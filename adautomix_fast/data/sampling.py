"""Seeded, shardable batch samplers, per-sample augmentation seeds, and the epoch loader.

Reproducibility scheme
----------------------
Every sample's augmentation is a pure function of ``(seed, epoch, index)``:

* the batch sampler runs in the main process and yields lists of keys ``(index, sample_seed)``
  with ``sample_seed = mix_seed(seed, epoch, index, _SAMPLE_TAG)``;
* :class:`SeededDataset` (running in whichever worker receives the key) applies the random
  transform inside ``torch.random.fork_rng(devices=[])`` after seeding the CPU generator with
  ``sample_seed``.

So the crop/flip of image ``i`` in epoch ``e`` does not depend on how many workers there are,
which worker got it, how the data is sharded across ranks, or what ran before it. ``fork_rng``
restores the CPU RNG state afterwards, so with ``workers=0`` (transforms in the main process)
the caller's global stream is left as it was. We seed ``torch.default_generator`` rather than
calling ``torch.manual_seed``: the latter also reseeds every CUDA generator, which
``fork_rng(devices=[])`` would not restore. The shuffle uses its own ``torch.Generator`` and the
DataLoader gets one too (it otherwise draws its worker base seed from the global RNG).

torchvision's random transforms (v1 and v2) draw only from torch's global CPU generator, which
is what makes this scheme sufficient; Python's ``random`` and NumPy are not used.

Resuming mid-epoch
------------------
``set_epoch(epoch, start_batch=k)`` gives the same epoch as ``set_epoch(epoch)`` (same order,
same samples, same augmentation: all of it is a function of ``(seed, epoch, index)``), but
iteration starts at batch ``k`` of this rank: the first ``k`` batches are never sampled, so never
loaded or transformed. ``len()`` stays the whole epoch's batch count (for schedules);
``remaining()`` is ``len() - k``, the batches an iteration yields. The start holds for every
pass until the next ``set_epoch``; ``set_epoch(epoch)`` starts at batch 0.

Corrupt images (``skip_corrupt=True``)
-------------------------------------
A training item whose image cannot be decoded is replaced by the next readable item of the
data set (index + 1, + 2, ...), so batches keep their fixed size; an evaluation item is dropped
(never replaced: every other image still counts exactly once). Each skipped file is recorded
once in the loader's :class:`SkipLog` and logged as a warning with the running count.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import signal
import sys
import threading
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..errors import DataError
from ..runtime.stopsignals import STOP_SIGNALS

log = logging.getLogger("adautomix_fast")

_MASK64 = (1 << 64) - 1
# Distinct tags keep the shuffle stream and the per-sample streams independent.
_SHUFFLE_TAG = 0x5348_5546  # "SHUF"
_SAMPLE_TAG = 0x5341_4D50  # "SAMP"
_LOADER_TAG = 0x4C4F_4144  # "LOAD"


def _splitmix64(x: int) -> int:
    """One round of SplitMix64: a cheap, well-mixed 64-bit hash (same on every platform)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """Hash integers (any sign) into a 63-bit seed, valid for ``Generator.manual_seed``."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch`` of a run seeded ``seed``."""
    return mix_seed(seed, epoch, index, _SAMPLE_TAG)


def check_start_batch(start_batch: int, num_batches: int) -> int:
    """``start_batch`` as an int; ValueError unless it is in ``[0, num_batches]`` (``num_batches``:
    the epoch's batch count; starting there gives an empty pass)."""
    k = operator.index(start_batch)  # TypeError for a float or a str: no silent truncation
    if not 0 <= k <= num_batches:
        raise ValueError(f"start_batch {k} is outside [0, {num_batches}] (this rank's batches per epoch)")
    return k


def loader_generator(seed: int) -> torch.Generator:
    """A private generator for DataLoader's base seed, so iterating never touches the global RNG."""
    return torch.Generator().manual_seed(mix_seed(seed, _LOADER_TAG))


class TrainBatchSampler(Sampler):
    """Shuffled, sharded batches of ``(index, sample_seed)`` keys; the last partial batch is dropped.

    Each epoch is a permutation of ``range(size)`` drawn from a generator seeded with
    ``(seed, epoch)``. Rank ``r`` of ``world_size`` takes every ``world_size``-th element starting
    at ``r``, truncated to ``size // world_size`` so every rank has the same number of batches
    (a rank with an extra batch would hang a DDP all-reduce). The shards are therefore disjoint
    and together cover the epoch up to ``size % world_size`` items, which change every epoch.

    ``set_epoch(epoch, start_batch=k)``: iteration yields batches ``k..len()-1`` of the epoch,
    exactly as an uninterrupted iteration yields them (see "Resuming mid-epoch" above).
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shard_size = size // world_size
        self.epoch = 0  # set_epoch() must be called each epoch; 0 until then
        self.start_batch = 0  # the first batch an iteration yields (set_epoch's start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select ``epoch``; iteration starts at batch ``start_batch`` (ValueError outside [0, len()])."""
        k = check_start_batch(start_batch, len(self))
        self.epoch = int(epoch)
        self.start_batch = k

    def __len__(self) -> int:
        """Batches of this rank in the whole epoch, whatever ``start_batch`` is."""
        return self.shard_size // self.batch_size

    def remaining(self) -> int:
        """Batches an iteration yields: ``len() - start_batch``."""
        return len(self) - self.start_batch

    def permutation(self) -> torch.Tensor:
        """The whole epoch's order (all ranks), int64 [size], a pure function of (seed, epoch)."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, _SHUFFLE_TAG))
        return torch.randperm(self.size, generator=g)

    def shard_indices(self) -> list[int]:
        """This rank's dataset indices for the current epoch, in iteration order (before batching)."""
        perm = self.permutation()
        return perm[self.rank : self.shard_size * self.world_size : self.world_size].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, Optional[int]]]]:
        indices = self.shard_indices()
        bs, epoch, seed = self.batch_size, self.epoch, self.seed
        for b in range(self.start_batch, len(self)):
            yield [(i, sample_seed(seed, epoch, i)) for i in indices[b * bs : (b + 1) * bs]]


class EvalBatchSampler(Sampler):
    """In-order batches of ``(index, None)`` keys; every item exactly once across ranks.

    Rank ``r`` gets the contiguous slice ``[r*size//world_size, (r+1)*size//world_size)``: no
    padding and no duplicates (DistributedSampler pads, which would count some images twice), so
    shard sizes may differ by one and the last partial batch is kept.
    """

    def __init__(self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1):
        self.size = size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start = rank * size // world_size
        self.stop = (rank + 1) * size // world_size
        self.shard_size = self.stop - self.start

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """No-op (evaluation order does not depend on the epoch; evaluation always runs whole, so
        ``start_batch`` is ignored); present for symmetry with :class:`TrainBatchSampler`."""

    def __len__(self) -> int:
        return -(-self.shard_size // self.batch_size)

    def remaining(self) -> int:
        return len(self)

    def shard_indices(self) -> list[int]:
        return list(range(self.start, self.stop))

    def __iter__(self) -> Iterator[list[tuple[int, Optional[int]]]]:
        for b in range(self.start, self.stop, self.batch_size):
            yield [(i, None) for i in range(b, min(b + self.batch_size, self.stop))]


class WorkerFailure:
    """A DataError message carried back from a worker as data instead of as an exception.

    DataLoader re-raises a worker exception as ``type(exc)("Caught X in DataLoader worker ...
    Original Traceback ...")`` (torch/_utils.py ``ExceptionWrapper.reraise``), which would turn our
    one-line message into a traceback dump. Returning this marker and raising in the main
    process keeps the exact message. A plain class (not a tuple) so collate/pin_memory pass it
    through untouched.
    """

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


class SkipLog:
    """The unreadable image files a loader skipped (``--skip-corrupt``): path -> reason.

    Shared by the train and val loaders of one ``build_loaders`` call; ``len()`` is the count.
    Each file is logged once, as a warning, when it is first met.
    """

    def __init__(self):
        self.files: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __contains__(self, path: str) -> bool:
        return path in self.files

    def add(self, path: str, reason: str) -> None:
        if path in self.files:
            return
        self.files[path] = reason
        log.warning("skipping unreadable image file %s (%s); %d skipped so far (--skip-corrupt)",
                    path, reason, len(self.files))


class Skipped:
    """What a SeededDataset returns when it skipped unreadable files for one key.

    ``item`` is the replacement ``(image, label)`` (training) or None (evaluation: dropped);
    ``files`` the ``(path, reason)`` pairs skipped on the way. Travels through collate like
    WorkerFailure does, so the main process can record the files whatever the worker count.
    """

    __slots__ = ("item", "files")

    def __init__(self, item, files: list[tuple[str, str]]):
        self.item = item
        self.files = files


class SkippedBatch:
    """A collated batch (or None if every item was dropped) plus the files skipped for it."""

    __slots__ = ("batch", "files")

    def __init__(self, batch, files: list[tuple[str, str]]):
        self.batch = batch
        self.files = files


def collate(batch: list[Any]) -> Any:
    """default_collate, except that a WorkerFailure in the batch becomes the whole batch and
    Skipped items are unwrapped (the skipped files ride along in a SkippedBatch)."""
    files: list[tuple[str, str]] = []
    items = []
    for item in batch:
        if isinstance(item, WorkerFailure):
            return item
        if isinstance(item, Skipped):
            files.extend(item.files)
            if item.item is not None:
                items.append(item.item)
        else:
            items.append(item)
    if not files:
        return default_collate(items)
    return SkippedBatch(default_collate(items) if items else None, files)


# How many following items a training item whose image is unreadable may try before giving up.
MAX_REPLACEMENT_TRIES = 64


class SeededDataset(Dataset):
    """Applies ``transform`` to ``source[index]`` under the RNG seed carried by the key.

    With ``skip_corrupt``, an item whose source raises a DataError carrying a ``path`` (an
    unreadable image file) is replaced (training keys) or dropped (evaluation keys); see the
    module docstring.
    """

    def __init__(self, source: Dataset, transform, skip_corrupt: bool = False):
        self.source = source
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def _load(self, index: int):
        """``(source item, skipped files)``; item None when an evaluation image was dropped."""
        try:
            return self.source[index], []
        except DataError as exc:
            path = getattr(exc, "path", None)  # folders.UnreadableImage
            if not self.skip_corrupt or path is None:
                raise
            skipped = [(path, getattr(exc, "reason", str(exc)))]
        return None, skipped

    def __getitem__(self, key: tuple[int, Optional[int]]):
        index, seed = key
        try:
            item, skipped = self._load(index)
            if item is None and seed is not None:  # training: the next readable item instead
                n = len(self)
                for step in range(1, min(n, MAX_REPLACEMENT_TRIES + 1)):
                    item, more = self._load((index + step) % n)
                    skipped += more
                    if item is not None:
                        break
                if item is None:
                    raise DataError(
                        f"--skip-corrupt: image {skipped[0][0]} and the {len(skipped) - 1} images after it "
                        f"are all unreadable; check the data folder")
            if item is None:
                return Skipped(None, skipped)
            image, label = item
            if seed is None:  # evaluation: deterministic transform, no RNG needed
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)
                    image = self.transform(image)
        except DataError as exc:
            return WorkerFailure(str(exc))
        return Skipped((image, label), skipped) if skipped else (image, label)


def worker_start_method(workers: int) -> Optional[str]:
    """None (the platform default, fork on Linux) unless NVIDIA DALI is loaded in this process:
    a DALI pipeline's threads may hold a lock (malloc's, mid-prefetch) at the moment of fork(),
    and the forked worker then hangs forever. forkserver forks workers from a clean server
    process instead; slower to start, once (workers persist across epochs)."""
    if workers > 0 and sys.modules.get("nvidia.dali") is not None:
        return "forkserver"
    return None


def leave_stop_signals_to(main_pid: int, _worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn`` (bound to the main process's pid with
    functools.partial): the worker leaves Ctrl-C, and SIGTERM/SIGUSR1 from anyone but the main
    process, to the main process, which stops the run and shuts the workers down. A terminal's
    Ctrl-C and a scheduler's SIGTERM reach the whole process group, and a worker that died of one
    would print its own traceback, or fail the loader, beside the run's one-line message.

    SIGTERM from the main process itself still ends the worker at once: that is how
    multiprocessing's ``terminate()`` stops workers at interpreter exit (it then joins them, so a
    worker ignoring it would hang the exit). Telling the senders apart needs ``sigwaitinfo``; where
    the platform lacks it (macOS) only Ctrl-C is left to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    # Blocked in this (so far the only) thread, so in every thread it starts; the daemon thread
    # below takes them one at a time.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_end_on_signal_from, args=(main_pid,), daemon=True, name="stop-signals").start()


def _end_on_signal_from(main_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_pid == main_pid:   # a requested shutdown: status 0, which the loader does not report
            os._exit(0)


class EpochLoader:
    """A DataLoader over a :class:`SeededDataset` with a batch sampler; re-raises DataErrors.

    Iterating yields ``(images float32 [B,3,H,W], labels int64 [B])``. ``len()`` is the number of
    batches of this rank in a whole epoch. Call ``set_epoch(e)`` before each training epoch, or
    ``set_epoch(e, start_batch=k)`` to resume epoch ``e`` at batch ``k`` (``remaining()`` batches
    follow; see "Resuming mid-epoch" in the module docstring).
    """

    def __init__(self, dataset: SeededDataset, batch_sampler, *, workers: int, pin_memory: bool, seed: int,
                 skipped: Optional[SkipLog] = None):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.batch_size = batch_sampler.batch_size
        self.skipped = skipped if skipped is not None else SkipLog()
        # What a loader over other images of the same run is built from (data/appended.py).
        self.options = dict(workers=workers, pin_memory=pin_memory, seed=seed, skipped=self.skipped)
        # The evaluation transform of a training loader's images (build_loaders sets it).
        self.plain_transform = None
        self.loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,  # keep workers (and their page cache) across epochs
            multiprocessing_context=worker_start_method(workers),
            generator=loader_generator(seed),
            worker_init_fn=functools.partial(leave_stop_signals_to, os.getpid()),
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch, start_batch=start_batch)

    @property
    def start_batch(self) -> int:
        return getattr(self.batch_sampler, "start_batch", 0)

    def __len__(self) -> int:
        """This rank's batches in a whole epoch (not reduced by ``start_batch``)."""
        return len(self.batch_sampler)

    def remaining(self) -> int:
        """The batches the next iteration yields: ``len() - start_batch``."""
        return self.batch_sampler.remaining()

    def __iter__(self):
        for batch in self.loader:
            if isinstance(batch, WorkerFailure):
                raise DataError(batch.message)
            if isinstance(batch, SkippedBatch):
                for path, reason in batch.files:
                    self.skipped.add(path, reason)
                if batch.batch is None:  # every image of an evaluation batch was unreadable
                    continue
                batch = batch.batch
            yield batch
