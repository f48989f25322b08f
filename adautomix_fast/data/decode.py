"""Small images decoded once into memory: CIFAR held as class folders, and ``folder`` data sets
whose images are all small.

Such images are a few hundred bytes each: decoding them again every epoch (a file open, a
header parse and a PIL image per item) would cost more than the training step of a small
network. They are decoded once, when the loaders are built, into the uint8 ``[N, H, W, 3]``
array an :class:`~.arrays.ArraySplit` holds, the very form the CIFAR pickles load into, so that
both data backends, the augmentation and the fingerprint treat them as the pickle layout.

Decoding runs in a process pool (PIL holds the GIL for most of a 32-px image's decode: a thread
pool barely helps) of ``workers`` processes, each decoding chunks of files in list order.
"""

from __future__ import annotations

import io
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator, NamedTuple, Optional

import numpy as np
from PIL import Image

from ..errors import DataError
from .folders import UnreadableImage, _clean
from .sampling import worker_start_method

# "Small": at most this many pixels on the longer side (Tiny ImageNet's 64 px included), the
# sizes at which the CIFAR stem and the pad-crop recipe apply (models.specs.default_cifar_stem).
SMALL_SIDE = 64
# Files per pool task: large enough that a task's overhead (pickling the arrays back, ~5%) stays
# small, small enough to spread over the workers and to stop soon after a large image.
CHUNK = 1024
# Below this many files a pool costs more to start than it saves.
POOL_MIN_FILES = 4 * CHUNK
# Header reads of the first look at a ``folder`` data set (spread over its files).
LOOK_FILES = 32


class _Large(NamedTuple):
    path: str
    size: tuple[int, int]


def _ignore_sigint() -> None:
    # Ctrl-C is the main process's to handle (it stops the pool); a worker interrupted mid-chunk
    # would only add a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _truncated(data: bytes) -> Optional[str]:
    """:func:`~.folders.header_problem`'s end-marker test on a file's bytes: a JPEG without its
    end-of-image marker or a PNG without its IEND chunk is a truncated copy (PIL may decode the
    part that is there without a word)."""
    tail = data[-32:]
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        return "truncated JPEG: no end-of-image marker"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        return "truncated PNG: no IEND chunk"
    return None


def decode_chunk(paths: list[str], exact: Optional[tuple[int, int]], max_side: Optional[int]):
    """Decode ``paths`` as RGB: ``(images, problems, count)``. ``images``: the decoded HWC uint8
    arrays in order, stacked into one ``[n, H, W, 3]`` array when they share a shape (one
    transfer back from a worker instead of one per image), else a list; ``problems``: {position:
    item} for the files that gave no image: ``("bad", reason)`` (unreadable or truncated),
    ``("size", (w, h))`` (not ``exact``) or a :class:`_Large` (longer side above ``max_side``:
    the set is not small, the chunk stops there); ``count``: the files looked at. Problems are
    returned, not raised, so that they cross the process boundary whatever their class."""
    images: list[np.ndarray] = []
    problems: dict[int, Any] = {}
    count = 0
    for k, path in enumerate(paths):
        count = k + 1
        data = b""
        try:
            with open(path, "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as img:
                size = img.size
                if exact is not None and size != exact:
                    problems[k] = ("size", size)
                    continue
                if max_side is not None and max(size) > max_side:
                    problems[k] = _Large(path, size)
                    break
                array = np.asarray(img.convert("RGB"))   # convert() forces the whole decode
            reason = _truncated(data)
            if reason is not None:
                problems[k] = ("bad", reason)
                continue
            images.append(array)
        except FileNotFoundError:
            problems[k] = ("bad", "file disappeared")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            problems[k] = ("bad", _truncated(data) or f"PIL: {_clean(exc)}")
    if images and len({a.shape for a in images}) == 1:
        return np.stack(images), problems, count
    return images, problems, count


def _chunks(paths: list[str]) -> list[list[str]]:
    return [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]


def _pool_context(workers: int):
    # A process that has run DALI must not fork beside its threads (sampling.worker_start_method).
    method = worker_start_method(workers)
    return multiprocessing.get_context(method) if method else None


def _results(paths: list[str], exact, max_side, workers: int) -> Iterator[list]:
    """decode_chunk's results chunk by chunk, in order; in a pool of ``workers`` processes when
    there are enough files. Closing the iterator early (a large image) cancels what is left."""
    chunks = _chunks(paths)
    if workers <= 1 or len(paths) < POOL_MIN_FILES:
        for chunk in chunks:
            yield decode_chunk(chunk, exact, max_side)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context(workers),
                               initializer=_ignore_sigint)
    try:
        futures = [pool.submit(decode_chunk, chunk, exact, max_side) for chunk in chunks]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _square(array: np.ndarray, side: int) -> np.ndarray:
    """``array`` (HWC) as ``side`` x ``side``: shorter side resized to ``side`` (bilinear, PIL's
    antialiased filter), then the centre crop, as torchvision's Resize + CenterCrop would."""
    h, w = array.shape[:2]
    if (h, w) == (side, side):
        return array
    scale = side / min(h, w)
    nh, nw = max(side, int(h * scale)), max(side, int(w * scale))
    img = Image.fromarray(array).resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - side) / 2.0)), int(round((nw - side) / 2.0))
    return np.asarray(img.crop((left, top, left + side, top + side)))


def decode_split(samples: list[tuple[str, int]], *, split: str, dataset: str, workers: int,
                 exact: Optional[tuple[int, int]] = None, max_side: Optional[int] = None,
                 skip_corrupt: bool = False, skipped=None, exact_hint: str = ""):
    """Decode every file of ``samples`` (``[(path, label)]``) into memory.

    exact: the size (w, h) every image must have (CIFAR: 32x32), else a one-line DataError naming
    the first file of another size. max_side: return None instead at the first image larger
    than that (the data set is not small). An unreadable or truncated file is a one-line
    :class:`UnreadableImage`, or with ``skip_corrupt`` is recorded in ``skipped`` and left out.
    Returns ``(arrays, labels)`` (one HWC uint8 array per kept file), or None (``max_side``).
    """
    paths = [p for p, _ in samples]
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    position = 0
    results = _results(paths, exact, max_side, workers)
    try:
        for images, problems, count in results:
            decoded = iter(images)
            for k in range(count):
                path, label = samples[position]
                position += 1
                item = problems.get(k)
                if item is None:
                    arrays.append(next(decoded))
                    labels.append(label)
                elif isinstance(item, _Large):
                    return None
                elif item[0] == "size":
                    w, h = item[1]
                    raise DataError(f"{dataset}: {split} image {path} is {w}x{h} px, not {exact[0]}x{exact[1]}"
                                    f"{exact_hint}")
                else:
                    reason = item[1]
                    if skip_corrupt and skipped is not None:
                        skipped.add(path, reason)
                        continue
                    if reason == "file disappeared":
                        raise UnreadableImage(f"image file {path} disappeared after the data folder was scanned; "
                                              "restore it and restart", path, reason)
                    raise UnreadableImage(f"corrupt image file {path} ({reason}); remove or replace it, or pass "
                                          "--skip-corrupt to leave such files out", path, reason)
    finally:
        results.close()
    return arrays, labels


def stack(arrays: list[np.ndarray], labels: list[int], side: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(images [N, side, side, 3], labels int64 [N], how many were resized)``."""
    images = np.empty((len(arrays), side, side, 3), np.uint8)
    resized = 0
    for i, a in enumerate(arrays):
        if a.shape[:2] != (side, side):
            a = _square(a, side)
            resized += 1
        images[i] = a
    return images, np.asarray(labels, dtype=np.int64), resized


def first_look_small(samples: list[tuple[str, int]], max_side: int = SMALL_SIDE, count: int = LOOK_FILES) -> bool:
    """Whether the image headers of up to ``count`` files spread over ``samples`` are all at most
    ``max_side`` px on their longer side (False at the first larger one, after one header read
    for a typical ImageNet-like set). Unreadable files are passed over here: decoding names them."""
    if not samples:
        return False
    step = max(1, len(samples) // count)
    for path, _ in samples[::step][:count]:
        try:
            with Image.open(path) as img:
                if max(img.size) > max_side:
                    return False
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
    return True


def common_side(arrays: list[np.ndarray]) -> int:
    """The side a ``folder`` set of small images is held at: its most frequent longer side (the
    larger on a tie), so that the fewest images are resampled."""
    sides = [max(a.shape[:2]) for a in arrays]
    if not sides:   # every file unreadable and skipped: the empty split is refused later
        return SMALL_SIDE
    values, counts = np.unique(sides, return_counts=True)
    return int(values[counts == counts.max()].max())
