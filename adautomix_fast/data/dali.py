"""NVIDIA DALI loaders: the ``--data-backend dali`` twin of the torchvision pipeline.

Same interface as :class:`~.sampling.EpochLoader`: iterating yields ``(images [B,3,H,W],
labels int64 [B])``, ``len()`` is this rank's batches per epoch, ``set_epoch(e)`` comes before
each training epoch, ``set_epoch(e, start_batch=k)`` resumes epoch ``e`` at its batch ``k``
(``remaining()`` batches follow; the first ``k`` are never read nor decoded) with the very
batches, augmentation included, that an uninterrupted epoch yields from batch ``k`` on (see
"Resuming mid-epoch" below). On a CUDA device the images (and labels) arrive on that GPU,
decoded by nvJPEG (``device="mixed"``); on a CPU device DALI runs CPU operators only
(``device_id=None``).

Image folders (imagenet, tiny-imagenet, folder)
    ``fn.readers.file`` over the file list of the torch backend's scan (so class indices are
    ImageFolder's), sharded by the reader (``shard_id``/``num_shards`` = rank/world size).
    Training: each epoch's list is the torch backend's permutation of ``(seed, epoch)``, laid
    out so that the reader's contiguous shard ``r`` is exactly the torch backend's rank-``r``
    shard, truncated to equal shards (same order, same batches, same lengths as the torch
    backend); the pipeline is rebuilt per epoch (15 ms for a small folder, 1.4 s with ImageNet's
    1.28M paths on a 2-core EPYC). Augmentation: torchvision's RandomResizedCrop (area 0.08-1,
    aspect 3/4-4/3, 10 attempts, else the clamped centre crop) computed in the pipeline from the
    encoded image's shape (``peek_image_shape``, no decoding) and per-image random numbers,
    then an ROI decode of that window (``decoders.image_slice``), ``resize`` to the square size,
    horizontal flip, ``crop_mirror_normalize`` to the output dtype. The random numbers come
    from an ``external_source`` and are a pure function of ``(seed, epoch, dataset index)``
    (:func:`crop_parameters`, seeded by the torch backend's per-image seed, another RNG than
    torchvision's): like the torch backend's, an image's crop and flip do not depend on batch
    size, sharding, its position in the epoch or what ran before. DALI's own random operators
    (``image_random_crop``, ``random.coin_flip``) are not used: they draw from one generator per
    position in the batch, whose state after ``k`` batches depends on every image before
    (rejection sampling on the image shapes), so a resumed epoch could not reproduce them
    without reading and decoding the skipped batches. Evaluation: torchvision's
    exact geometry (shorter side to ``int(size / 0.875)``, or ``size`` for tiny-imagenet, the
    longer side truncated like torchvision; centre crop rounded like torchvision), no flip;
    ``pad_last_batch`` + ``stick_to_shard`` + ``LastBatchPolicy.PARTIAL`` so every image of the
    shard is yielded exactly once per pass, in order, and the pipeline is reused across epochs.
In-memory arrays (digits, cifar10 and cifar100 in either layout, ``folder`` of small images)
    ``fn.external_source`` (batch mode) feeds the uint8 HWC images of the torch backend's
    batches (same samplers: same order and sharding) plus per-sample crop offsets and flip
    flags drawn from ``(seed, epoch)`` and indexed by dataset index, so an image's augmentation
    does not depend on sharding or batch size (like the torch backend's, with another RNG).
    The pad-4 random crop is a ``fn.slice`` with an out-of-bounds window padded with zeros and
    the flip is ``crop_mirror_normalize``'s mirror, both on the GPU when there is one. The
    source is a slice of an in-memory array (microseconds per batch), so the parallel
    (multi-process) external source would only add shared-memory copies: it is not used.

``channels_last=True``: DALI writes NHWC and the loader returns ``x.permute(0, 3, 1, 2)``, an
NCHW-shaped channels-last view of the same memory (no copy).

Unreadable images: DALI reports a failed batch as one multi-line RuntimeError. The loader finds
the file (named in DALI's message, else by decoding the batch's files with PIL, else with
DALI one file at a time) and raises the torch backend's one-line DataError naming it, or with
``skip_corrupt`` records it in the shared :class:`~.sampling.SkipLog` and rebuilds the reader
for the rest of the epoch: in training the file is replaced by the next readable file of the
rank's list (fixed batch shapes, same number of batches), in evaluation it is dropped.

Resuming mid-epoch (training; evaluation ignores ``start_batch``)
    Image folders: the reader gets this rank's list of the epoch from position ``k * B`` on
    (unsharded, like after a skipped file), and the crop source the same positions' dataset
    indices: the same files in the same order with the same crops and flips. On the CPU the
    batches are bitwise those of the uninterrupted epoch (tested); on the GPU the same
    files, labels and windows go through the same nvJPEG/resize kernels, so they are equal up
    to nvJPEG's own determinism (not tested on a GPU yet). With ``skip_corrupt``, a resumed
    process's SkipLog lacks the unreadable files of the skipped batches (never read).
    Arrays: the source starts at batch ``k``; the crop offsets and flips are indexed by dataset
    index: bitwise the uninterrupted epoch's batches.

DALI is optional: this module imports without it, and only the loaders import it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import numpy as np
import torch

from ..errors import DataError, UsageError
from .folders import UnreadableImage, open_rgb
from .sampling import _SAMPLE_TAG, EvalBatchSampler, SkipLog, TrainBatchSampler, _splitmix64, mix_seed
from .transforms import EVAL_CROP_RATIO, NATIVE_SIZE, NORMALIZATION

__all__ = ["INSTALL_HINT", "dali_import_error", "dali_version", "resolve_backend", "build_dali_loader"]

INSTALL_HINT = "pip install nvidia-dali-cuda130"
READER = "Reader"
# torchvision RandomResizedCrop's defaults.
RRC_AREA = (0.08, 1.0)
RRC_ASPECT = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
# nvJPEG scratch sizes of NVIDIA's DALI ResNet-50 example: large enough for nearly every
# ImageNet JPEG, so the decoder does not reallocate during the first epoch.
GPU_DECODER_PADDING = dict(device_memory_padding=211025920, host_memory_padding=140544512)
# After a DALI failure, the batches (from the first one not yet yielded) searched for the file.
# DALI reports a failure at the iteration it happened; the margin covers the prefetch queue.
SEARCH_BATCHES = 3
DALI_FORMATS = "JPEG, PNG, BMP, TIFF, PNM, JPEG 2000 and WebP"
_CROP_TAG = 0x4352_4F50  # "CROP": random numbers of the image-folder crops and flips
_ARRAY_TAG = 0x4152_5259  # "ARRY": crop offsets and flips of array data sets

_IMPORT: dict[str, Any] = {}  # the DALI modules once imported
_IMPORT_ERROR: dict[str, str] = {}  # {"error": reason} once an import failed


def _dali():
    """The DALI modules as a dict (imported once); UsageError naming the install if it fails."""
    if not _IMPORT:
        reason = dali_import_error()
        if reason is not None:
            raise UsageError(f"--data-backend dali needs NVIDIA DALI, which does not import here ({reason}); "
                             f"install it with `{INSTALL_HINT}` or use --data-backend torch")
    return _IMPORT


def dali_import_error() -> Optional[str]:
    """None when DALI imports; otherwise why not, in one line (the result is cached)."""
    if _IMPORT:
        return None
    if "error" in _IMPORT_ERROR:
        return _IMPORT_ERROR["error"]
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except Exception as exc:  # ImportError, or OSError from a missing shared library
        _IMPORT_ERROR["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())
        return _IMPORT_ERROR["error"]
    _IMPORT.update(dali=dali, fn=fn, math=dmath, types=types, Pipeline=dali.Pipeline,
                   Iterator=DALIGenericIterator, LastBatchPolicy=LastBatchPolicy)
    return None


def dali_version() -> Optional[str]:
    return None if dali_import_error() else _IMPORT["dali"].__version__


_PROBED: dict[int, Optional[str]] = {}


def _gpu_probe(device_id: int) -> Optional[str]:
    """None if a DALI GPU pipeline runs on ``device_id`` (e.g. the wheel matches the driver)."""
    if device_id not in _PROBED:
        d = _dali()
        pipe = None
        try:
            pipe = d["Pipeline"](batch_size=1, num_threads=1, device_id=device_id)
            with pipe:
                pipe.set_outputs(d["fn"].random.uniform(range=[0.0, 1.0], shape=[1]).gpu())
            pipe.build()
            pipe.run()
            _PROBED[device_id] = None
        except Exception as exc:
            _PROBED[device_id] = _core_message(str(exc))
        finally:
            _shutdown(pipe)
    return _PROBED[device_id]


def _shutdown(pipe) -> None:
    """Stop a pipeline's threads now rather than whenever GC collects it (what __del__ calls)."""
    shutdown = getattr(pipe, "_shutdown", None)
    if shutdown is not None:
        shutdown()


def resolve_backend(backend: str, device: Optional[torch.device]) -> str:
    """``"torch"`` or ``"dali"`` for ``--data-backend`` and the training device.

    auto: dali when DALI imports and the device is CUDA (and a DALI GPU pipeline runs there),
    torch otherwise. dali: DALI must import (else a one-line UsageError with the pip command);
    with a CUDA device its GPU pipeline must run too.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if dev.type != "cuda" or dali_import_error() is not None:
            return "torch"
        return "dali" if _gpu_probe(_device_id(dev)) is None else "torch"
    if backend == "dali":
        _dali()  # raises the install hint
        if dev.type == "cuda":
            reason = _gpu_probe(_device_id(dev))
            if reason is not None:
                raise UsageError(f"--data-backend dali: DALI cannot run on {dev} ({reason}); "
                                 f"install the DALI wheel for this CUDA ({INSTALL_HINT}) or use --data-backend torch")
        return "dali"
    raise UsageError(f"--data-backend must be auto, torch or dali (got {backend!r})")


def _device_id(dev: torch.device) -> int:
    return dev.index if dev.index is not None else torch.cuda.current_device()


def _dali_dtype(dtype: torch.dtype):
    types = _dali()["types"]
    table = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16}
    if dtype not in table:
        raise UsageError(f"the DALI backend outputs float32 or float16 images, not {dtype}")
    return table[dtype]


def _core_message(raw: str) -> str:
    """The useful line of a DALI error (which spans many lines: operator, traceback, context)."""
    lines = [ln.strip() for ln in raw.splitlines()]
    if "encountered:" in lines:
        lines = lines[len(lines) - lines[::-1].index("encountered:"):]
    noise = ("Current pipeline object is no longer valid", "Critical error in pipeline", "C++ context",
             "Error in CPU operator", "Error in MIXED operator", "Error in GPU operator")
    for ln in lines:
        if ln and not ln.startswith(noise) and not re.match(r'File ".*", line \d+', ln):
            return " ".join(ln.split())
    return " ".join(raw.split())[:300] or "unknown DALI error"


def _outputs(out, channels_last: bool):
    """DALIGenericIterator output -> (images [B,3,H,W], labels int64 [B]) without copying images."""
    batch = out[0]
    x = batch["images"]
    if channels_last:
        x = x.permute(0, 3, 1, 2)  # NHWC memory as an NCHW channels-last view: no copy
    return x, batch["labels"].reshape(-1).to(torch.int64)


def _normalize_args(name: str) -> dict:
    mean, std = NORMALIZATION[name]
    return dict(mean=[255.0 * m for m in mean], std=[255.0 * s for s in std])


# ---------------------------------------------------------------------------- per-image random numbers
_U64 = np.uint64


def _splitmix64_np(x: np.ndarray) -> np.ndarray:
    """:func:`.sampling._splitmix64` on a uint64 array (wrapping arithmetic, like the scalar one)."""
    with np.errstate(over="ignore"):
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def sample_seeds(seed: int, epoch: int, indices) -> np.ndarray:
    """``[sample_seed(seed, epoch, i) for i in indices]`` as uint64, vectorised (the torch
    backend's per-image augmentation seeds)."""
    mask = (1 << 64) - 1
    prefix = _splitmix64(_splitmix64(int(seed) & mask) ^ (int(epoch) & mask))
    h = _splitmix64_np(_U64(prefix) ^ np.asarray(indices, dtype=np.int64).astype(_U64))
    return _splitmix64_np(h ^ _U64(_SAMPLE_TAG)) >> _U64(1)


def crop_parameters(seed: int, epoch: int, indices) -> tuple[np.ndarray, ...]:
    """The random numbers of the image-folder training augmentation of dataset items ``indices``
    in ``epoch``: a pure function of ``(seed, epoch, index)`` (a SplitMix64 stream seeded from
    the torch backend's per-image seed), so independent of batch size, sharding, position in
    the epoch and of whatever ran before.

    Returns ``(area [B,2,A], start [B,2], flip [B])``, float32 except ``flip`` (int32 0/1), with
    ``A = RRC_ATTEMPTS``: attempt ``a`` of RandomResizedCrop asks for the window
    ``h = round(sqrt(area[0,a]*H*W)), w = round(sqrt(area[1,a]*W*H))`` (``area = (s/r, s*r)``,
    ``s`` uniform in RRC_AREA, ``log r`` uniform in log RRC_ASPECT); ``start`` (uniform in
    [0, 1)) places the window (y, x); ``flip`` is the horizontal flip.
    """
    a = RRC_ATTEMPTS
    state = _splitmix64_np(sample_seeds(seed, epoch, indices) ^ _U64(_CROP_TAG))
    with np.errstate(over="ignore"):
        bits = _splitmix64_np(state[:, None] + np.arange(2 * a + 3, dtype=_U64) * _U64(0x9E3779B97F4A7C15))
    u53 = (bits >> _U64(11)).astype(np.float64) * 2.0 ** -53  # [0, 1)
    scale = RRC_AREA[0] + (RRC_AREA[1] - RRC_AREA[0]) * u53[:, :a]
    lo, hi = np.log(RRC_ASPECT[0]), np.log(RRC_ASPECT[1])
    ratio = np.exp(lo + (hi - lo) * u53[:, a:2 * a])
    area = np.stack([scale / ratio, scale * ratio], axis=1).astype(np.float32)
    start = (bits[:, 2 * a:2 * a + 2] >> _U64(40)).astype(np.float32) * np.float32(2.0 ** -24)  # exact, < 1
    flip = (bits[:, 2 * a + 2] >> _U64(63)).astype(np.int32)
    return area, start, flip


class _CropSource:
    """external_source callback (batch mode) of the image-folder training pipeline: the
    :func:`crop_parameters` of the reader's batch ``info.iteration``, i.e. of ``keys[it*B:(it+1)*B]``
    (``keys``: the dataset index each reader position is keyed by). Iterations past the end
    (the reader's padded last batch, prefetching) get the last key repeated: those batches are
    never yielded."""

    def __init__(self, keys: list[int], seed: int, epoch: int, batch_size: int):
        self.keys = np.asarray(keys, dtype=np.int64)
        self.seed, self.epoch, self.batch_size = seed, epoch, batch_size

    def __call__(self, info):
        bs = self.batch_size
        idx = self.keys[info.iteration * bs:(info.iteration + 1) * bs]
        if len(idx) < bs:
            idx = np.concatenate([idx, np.full(bs - len(idx), self.keys[-1], dtype=np.int64)])
        return crop_parameters(self.seed, self.epoch, idx)


def _rrc_window(shape, area, start):
    """torchvision RandomResizedCrop's window in DALI arithmetic, from :func:`crop_parameters`'
    ``area`` [2,A] and ``start`` [2]: the first of the RRC_ATTEMPTS windows that fits the image,
    at ``floor(start * (extent - window + 1))``; if none fits, the centre crop with the aspect
    clamped to RRC_ASPECT (W/H < lo: h = round(W/lo); H/W < 1/hi: w = round(H*hi)). ``shape``:
    the encoded image's (H, W, C) as float. Returns (anchor, window): float (y, x) and (h, w),
    whole numbers. Vectorised over (h, w) to keep the operator count, hence the CPU time per
    sample, low (about 27 us per image on a 2-core EPYC, on top of 19 us of reading and peeking).
    """
    d = _dali()
    fn, types, dmath = d["fn"], d["types"], d["math"]
    lo, hi = RRC_ASPECT
    hw = shape[0:2]  # (H, W)
    wh = shape[1::-1]  # (W, H)
    col, rcol = fn.reshape(hw, shape=[2, 1]), fn.reshape(wh, shape=[2, 1])
    cand = dmath.floor(dmath.sqrt(area * col * rcol) + 0.5)  # [2, A]: (h, w) of each attempt
    fits = fn.reductions.min((cand <= col) * (cand >= 1.0) * 1.0, axes=0)  # [A]: 1.0 where both fit
    rank = fits * types.Constant(np.arange(RRC_ATTEMPTS, 0, -1, dtype=np.float32))  # the first fit ranks highest
    best = fn.reductions.max(rank)  # 0 when none fits
    chosen = fn.reductions.sum(cand * ((rank == best) * (best > 0.0)), axes=1)  # [2], zeros when none fits
    clamp = wh / hw < types.Constant(np.array([lo, 1.0 / hi], dtype=np.float32))
    fallback = hw + clamp * (dmath.floor(wh * types.Constant(np.array([1.0 / lo, hi], dtype=np.float32)) + 0.5) - hw)
    window = chosen + (best <= 0.0) * fallback
    anchor = ((best > 0.0) * dmath.min(dmath.floor(start * (hw - window + 1.0)), hw - window)
              + (best <= 0.0) * dmath.floor((hw - window) * 0.5))
    return anchor, window


class _LoaderBase:
    """What the two DALI loaders share: sampler (order, sharding, length), iterator caching."""

    def __init__(self, sampler, *, name: str, size: int, train: bool, augment: bool, seed: int, threads: int,
                 device_id: Optional[int], dtype: torch.dtype, channels_last: bool, skipped: SkipLog):
        self.batch_sampler = sampler
        self.batch_size = sampler.batch_size
        self.name = name
        self.size = size
        self.train = train
        self.augment = augment and train
        self.seed = seed
        self.threads = max(1, threads)
        self.device_id = device_id
        self.dtype = dtype
        self.channels_last = channels_last
        self.skipped = skipped
        self._iterator = None  # kept across passes where it can be reset (see _take_iterator)
        self._iterator_key: Any = None
        self._pipes: list = []  # the pipelines behind self._iterator
        self._clean_end = False  # the last pass ran to StopIteration, so reset() is allowed

    @property
    def epoch(self) -> int:
        return getattr(self.batch_sampler, "epoch", 0)

    @property
    def start_batch(self) -> int:
        """The batch of this rank's epoch that an iteration starts at (0 for evaluation)."""
        return getattr(self.batch_sampler, "start_batch", 0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Training: select ``epoch`` and start iterating at its batch ``start_batch`` (ValueError
        outside [0, len()]); evaluation ignores both."""
        self.batch_sampler.set_epoch(epoch, start_batch=start_batch)

    def __len__(self) -> int:
        """This rank's batches in a whole epoch (not reduced by ``start_batch``)."""
        return len(self.batch_sampler)

    def remaining(self) -> int:
        """The batches the next iteration yields: ``len() - start_batch``."""
        return self.batch_sampler.remaining()

    def _pipeline(self, seed: int):
        d = _dali()
        pipe = d["Pipeline"](batch_size=self.batch_size, num_threads=self.threads, device_id=self.device_id,
                             seed=seed, prefetch_queue_depth=2)
        self._pipes.append(pipe)
        return pipe

    def _finish(self, images, mirror):
        """crop_mirror_normalize to the output dtype and layout (uint8 HWC in)."""
        d = _dali()
        return d["fn"].crop_mirror_normalize(
            images, dtype=_dali_dtype(self.dtype), output_layout="HWC" if self.channels_last else "CHW",
            mirror=mirror, **_normalize_args(self.name))

    def _discard(self) -> None:
        """Drop the iterator and stop its pipelines' threads now (not whenever GC runs): an idle
        loader then runs nothing behind the caller's back (a DataLoader fork, the next epoch)."""
        self._iterator, self._iterator_key, self._clean_end = None, None, False
        pipes, self._pipes = self._pipes, []
        for pipe in pipes:
            _shutdown(pipe)

    def close(self) -> None:
        """Stop DALI's threads and free its buffers (batches already yielded stay valid)."""
        self._discard()

    def __del__(self):
        try:
            self._discard()
        except Exception:  # interpreter shutdown: DALI may be half torn down already
            pass

    def _take_iterator(self, key, make):
        """The cached iterator reset for a new pass when ``key`` matches and the last pass ended
        cleanly (DALI ignores reset() mid-epoch), else a new one from ``make()``."""
        if self._iterator is not None and self._iterator_key == key and self._clean_end:
            self._iterator.reset()
        else:
            self._discard()
            self._iterator = make()
            self._iterator_key = key
        self._clean_end = False
        return self._iterator


# ---------------------------------------------------------------------------- image folders
class DaliFolderLoader(_LoaderBase):
    """``fn.readers.file`` pipeline over a FolderSplit's ``samples`` (see the module docstring)."""

    def __init__(self, samples: list[tuple[str, int]], sampler, *, skip_corrupt: bool, **kw):
        super().__init__(sampler, **kw)
        self.samples = samples
        self.skip_corrupt = skip_corrupt

    # ---- order
    def _order(self) -> list[int]:
        """Dataset indices in reader order for all ranks (the reader shards it contiguously)."""
        s = self.batch_sampler
        if not self.train:
            return list(range(len(self.samples)))
        perm = s.permutation()[: s.shard_size * s.world_size]
        # Rank r's torch-backend shard is perm[r::W]; rank-major layout makes it the reader's shard r.
        return perm.view(s.shard_size, s.world_size).t().reshape(-1).tolist()

    def _mine(self, order: list[int]) -> list[int]:
        """This rank's indices in iteration order with the skipped files replaced (training) or
        dropped (evaluation)."""
        s = self.batch_sampler
        mine = order[s.rank * s.shard_size:(s.rank + 1) * s.shard_size] if self.train else order[s.start:s.stop]
        if not len(self.skipped):
            return mine
        bad = [self.samples[i][0] in self.skipped for i in mine]
        if not any(bad):
            return mine
        if not self.train:
            return [i for i, b in zip(mine, bad) if not b]
        good = [k for k, b in enumerate(bad) if not b]
        if not good:
            raise DataError(f"--skip-corrupt: every image of this rank's share of {self._where()} is unreadable")
        out, n = list(mine), len(mine)
        for k in range(n):
            if bad[k]:  # the next readable file of the list, cyclically
                j = next(((k + t) % n for t in range(1, n) if not bad[(k + t) % n]))
                out[k] = mine[j]
        return out

    def _where(self) -> str:
        return os.path.dirname(os.path.dirname(self.samples[0][0])) if self.samples else "the data folder"

    # ---- pipeline
    def _build(self, indices: list[int], shard_id: int, num_shards: int, keys: list[int]):
        """Pipeline + iterator over ``indices`` (the reader's shard ``shard_id`` of ``num_shards``);
        ``keys``: the dataset index whose random numbers each position of *this rank's shard* uses."""
        d = _dali()
        fn, types, dmath = d["fn"], d["types"], d["math"]
        pipe = self._pipeline(0)  # no DALI random op: the crop source carries the randomness
        gpu = self.device_id is not None
        decoder = dict(device="mixed", **GPU_DECODER_PADDING) if gpu else dict(device="cpu")
        # EXIF orientation ignored and libjpeg's chroma upsampling on the GPU too: what PIL does.
        decoder.update(output_type=types.RGB, adjust_orientation=False)
        if gpu:
            decoder["jpeg_fancy_upsampling"] = True
        size = self.size
        with pipe:
            jpegs, labels = fn.readers.file(
                files=[self.samples[i][0] for i in indices], labels=[self.samples[i][1] for i in indices],
                shard_id=shard_id, num_shards=num_shards, random_shuffle=False, pad_last_batch=True,
                stick_to_shard=True, name=READER)
            if self.augment:
                area, start, mirror = fn.external_source(
                    source=_CropSource(keys, self.seed, self.epoch, self.batch_size), num_outputs=3, batch=True,
                    batch_info=True, dtype=[types.FLOAT, types.FLOAT, types.INT32])
                shape = fn.cast(fn.peek_image_shape(jpegs, adjust_orientation=False), dtype=types.FLOAT)
                anchor, window = _rrc_window(shape, area, start)
                # ROI decode of the window (what image_random_crop does with its own window).
                images = fn.decoders.image_slice(jpegs, anchor, window, axis_names="HW", normalized_anchor=False,
                                                 normalized_shape=False, **decoder)
                images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            else:
                # torchvision: Resize(short) gives (short, int(short * long / shorter)), then
                # CenterCrop's top = int(round((H - size) / 2)) (round half to even).
                short = size if self.name == "tiny-imagenet" else int(size / EVAL_CROP_RATIO)
                shape = fn.cast(fn.peek_image_shape(jpegs, adjust_orientation=False), dtype=types.FLOAT)
                h, w = shape[0], shape[1]
                shorter = dmath.min(h, w)
                out_h, out_w = dmath.floor(short * h / shorter), dmath.floor(short * w / shorter)
                images = fn.decoders.image(jpegs, **decoder)
                images = fn.resize(images, resize_x=out_w, resize_y=out_h, antialias=True)

                def centre(extent):
                    q = dmath.floor((extent - size) / 2.0)
                    odd = (extent - size) - 2.0 * q  # 1 when the margin is odd: a .5 to round to even
                    return q + odd * (q - 2.0 * dmath.floor(q / 2.0))

                anchor = fn.cast(fn.stack(centre(out_h), centre(out_w)), dtype=types.INT32)
                images = fn.slice(images, start=anchor, shape=[size, size], axis_names="HW",
                                  out_of_bounds_policy="pad")
                mirror = 0
            images = self._finish(images, mirror)
            pipe.set_outputs(images, labels.gpu() if gpu else labels)
        policy = d["LastBatchPolicy"].DROP if self.train else d["LastBatchPolicy"].PARTIAL
        return d["Iterator"]([pipe], ["images", "labels"], reader_name=READER, last_batch_policy=policy,
                             auto_reset=False, prepare_first_batch=False)

    def _iterator_for(self, order: list[int], mine: list[int], plain: list[int], pos: int, explicit: bool):
        s = self.batch_sampler
        if explicit:  # after a skip or from start_batch: this rank's own list from ``pos``, unsharded
            self._discard()
            return self._build(mine[pos:], 0, 1, plain[pos:])
        if self.train:  # a new list (and random numbers) every epoch
            self._discard()
            return self._build(order, s.rank, s.world_size, plain)
        return self._take_iterator("shards", lambda: self._build(order, s.rank, s.world_size, plain))

    # ---- iteration
    def __iter__(self):
        order = self._order()
        plain = self._mine_plain(order)
        mine = self._mine(order)
        total = self._total(mine)
        # Resuming at start_batch k: the reader gets this rank's list from position k*B, so the
        # first k batches are never read or decoded; the crops and flips are keyed by dataset
        # index (crop_parameters), so the batches that follow are those of a whole epoch.
        pos = self.start_batch * self.batch_size if self.train else 0
        explicit = mine != plain or pos > 0
        if pos >= total:
            return
        it = None
        while pos < total:
            try:
                if it is None:
                    it = self._iterator_for(order, mine, plain, pos, explicit)
                out = next(it)
            except StopIteration:
                break
            except UsageError:
                raise
            except Exception as exc:  # DALI reports every pipeline failure as one RuntimeError
                self._discard()
                it = None
                self._handle_failure(exc, mine, pos)  # raises, or records files that are skipped from now on
                mine, explicit = self._mine(order), True
                total = self._total(mine)
                continue
            x, y = _outputs(out, self.channels_last)
            pos += y.shape[0]
            yield x, y
        if self.train:
            self._discard()  # rebuilt every epoch anyway: free the decoder while evaluation runs
            return
        try:  # reach StopIteration so that the next pass may reset() instead of rebuilding
            next(it)
        except StopIteration:
            self._clean_end = True
        except Exception:
            self._discard()

    def _mine_plain(self, order):
        s = self.batch_sampler
        return order[s.rank * s.shard_size:(s.rank + 1) * s.shard_size] if self.train else order[s.start:s.stop]

    def _total(self, mine: list[int]) -> int:
        return len(mine) // self.batch_size * self.batch_size if self.train else len(mine)

    def _handle_failure(self, exc: BaseException, mine: list[int], pos: int) -> None:
        """Find the unreadable file(s) among the next batches; raise DataError or record them."""
        raw = str(exc)
        core = _core_message(raw)
        bs = self.batch_size
        window = [self.samples[i][0] for i in mine[pos: pos + SEARCH_BATCHES * bs]]
        bad: list[tuple[str, str, str]] = []  # (path, reason, message)

        def corrupt(path, reason):
            if not os.path.exists(path):  # the torch backend's words for it
                return (path, "file disappeared",
                        f"image file {path} disappeared after the data folder was scanned; restore it and restart")
            return path, reason, f"corrupt image file {path} ({reason}); remove or replace it"

        named = [p for p in dict.fromkeys(window) if p in raw]
        if named:
            reason = core.replace(named[0], "").replace(" : ", "").strip(" :") or "decoding failed"
            bad.append(corrupt(named[0], f"DALI: {reason}"))
        for check in (_pil_check, _dali_check):  # batch by batch: the failure is in the first bad one
            for b in range(0, len(window), bs):
                if bad:
                    break
                for path in dict.fromkeys(window[b:b + bs]):
                    reason = check(path)
                    if reason is None:
                        continue
                    if check is _pil_check:
                        bad.append(corrupt(path, reason))
                    else:  # PIL reads it: a format DALI does not decode (GIF, say)
                        bad.append((path, f"a format DALI cannot decode ({reason})",
                                    f"image file {path} is in a format DALI cannot decode ({reason}; "
                                    f"DALI reads {DALI_FORMATS}); convert it, or use --data-backend torch"))
        if not bad:
            first = window[0] if window else self._where()
            raise DataError(f"DALI failed to read the images from {first} on ({core}); "
                            f"rerun with --data-backend torch to have the file named")
        if not self.skip_corrupt:
            raise DataError(bad[0][2])
        for path, reason, _ in bad:
            self.skipped.add(path, reason)


def _pil_check(path: str) -> Optional[str]:
    try:
        open_rgb(path)
    except UnreadableImage as exc:
        return exc.reason
    return None


def _dali_check(path: str) -> Optional[str]:
    """Decode one file with a one-sample DALI CPU pipeline; the reason it fails, or None."""
    d = _dali()
    pipe = None
    try:
        pipe = d["Pipeline"](batch_size=1, num_threads=1, device_id=None)
        with pipe:
            jpegs, _ = d["fn"].readers.file(files=[path])
            pipe.set_outputs(d["fn"].decoders.image(jpegs, device="cpu", output_type=d["types"].RGB))
        pipe.build()
        pipe.run()
    except Exception as exc:
        return "DALI: " + _core_message(str(exc)).replace(path, "the file")
    finally:
        _shutdown(pipe)
    return None


# ---------------------------------------------------------------------------- in-memory arrays
class _BatchSource:
    """external_source callback (batch mode): batch ``info.iteration`` of the current pass."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = labels
        self.batches: list[np.ndarray] = []
        self.extra: list[np.ndarray] = []  # per-dataset-index crop starts [N,2] / flips [N]

    def __call__(self, info):
        if info.iteration >= len(self.batches):
            raise StopIteration
        idx = self.batches[info.iteration]
        return (self.images[idx], self.labels[idx], *(a[idx] for a in self.extra))


class DaliArrayLoader(_LoaderBase):
    """``fn.external_source`` pipeline over an ArraySplit (see the module docstring)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, sampler, **kw):
        super().__init__(sampler, **kw)
        self.source = _BatchSource(images, labels)
        self.num_images = len(labels)
        # The arrays' own side: a ``folder`` data set of small images is held at its size, not
        # at the 224 px of NATIVE_SIZE.
        self.native = int(images.shape[1]) if images.ndim == 4 else NATIVE_SIZE[self.name]
        self.pad = max(1, self.size // 8)  # the torch backend's RandomCrop padding
        self.flip = self.augment and self.name != "digits"  # a mirrored digit is another glyph

    def augmentation(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Crop window starts ``[N, 2]`` (y, x in -pad..pad, relative to the unpadded image) and
        flips ``[N]`` (0/1) of every dataset index for ``epoch``: a pure function of (seed, epoch)."""
        rng = np.random.Generator(np.random.PCG64(mix_seed(self.seed, epoch, _ARRAY_TAG)))
        start = rng.integers(-self.pad, self.pad + 1, size=(self.num_images, 2), dtype=np.int32)
        flip = rng.integers(0, 2, size=self.num_images, dtype=np.int32)
        return start, flip

    def _batches(self) -> list[np.ndarray]:
        """The dataset indices of the batches this pass yields (training: from ``start_batch`` on;
        the crops and flips are indexed by dataset index, so a resumed epoch's batches are exactly
        those of the whole epoch)."""
        s = self.batch_sampler
        if self.train:
            idx = np.asarray(s.shard_indices(), dtype=np.int64)
            return [idx[b * self.batch_size:(b + 1) * self.batch_size] for b in range(s.start_batch, len(s))]
        return [np.arange(b, min(b + self.batch_size, s.stop), dtype=np.int64)
                for b in range(s.start, s.stop, self.batch_size)]

    def _build(self):
        d = _dali()
        fn, types = d["fn"], d["types"]
        pipe = self._pipeline(0)  # no DALI random op: the source carries the augmentation
        gpu = self.device_id is not None
        n_extra = (1 if self.augment else 0) + (1 if self.flip else 0)
        with pipe:
            outs = fn.external_source(source=self.source, num_outputs=2 + n_extra, batch=True, batch_info=True,
                                      layout=["HWC", ""] + [""] * n_extra,
                                      dtype=[types.UINT8, types.INT64] + [types.INT32] * n_extra)
            images, labels = outs[0], outs[1]
            if gpu:
                images = images.gpu()
            if self.size != self.native:  # torchvision Resize(size) of a square image
                images = fn.resize(images, resize_x=self.size, resize_y=self.size, antialias=True)
            if self.augment:  # pad-4 random crop = a window reaching up to pad pixels outside, zero-filled
                images = fn.slice(images, start=outs[2], shape=[self.size, self.size], axis_names="HW",
                                  out_of_bounds_policy="pad", fill_values=0)
            images = self._finish(images, outs[3] if self.flip else 0)
            pipe.set_outputs(images, labels.gpu() if gpu else labels)
        return d["Iterator"]([pipe], ["images", "labels"], auto_reset=False, prepare_first_batch=False)

    def __iter__(self):
        batches = self._batches()
        if not batches:
            return
        # Set the pass's plan before reset()/the first run: both call the source at once (prefetch).
        self.source.batches = batches
        if self.augment:
            start, flip = self.augmentation(self.epoch)
            self.source.extra = [start] + ([flip] if self.flip else [])
        it = self._take_iterator("arrays", self._build)
        try:
            for _ in range(len(batches)):
                yield _outputs(next(it), self.channels_last)
            next(it)  # the source's StopIteration ends DALI's epoch
        except StopIteration:
            self._clean_end = True
            return
        self._discard()  # more batches than planned: never expected, do not reuse


# ---------------------------------------------------------------------------- entry point
def build_dali_loader(name: str, split, *, train: bool, augment: bool, batch_size: int, size: int, seed: int,
                      rank: int, world_size: int, workers: int, device: Optional[torch.device],
                      dtype: torch.dtype, channels_last: bool, skip_corrupt: bool, skipped: SkipLog):
    """One DALI loader for a split of data set ``name`` (``split`` as the torch backend loads it)."""
    _dali()
    dev = torch.device("cpu") if device is None else torch.device(device)
    _dali_dtype(dtype)
    n = len(split)
    sampler = (TrainBatchSampler(n, batch_size, seed=seed, rank=rank, world_size=world_size) if train
               else EvalBatchSampler(n, batch_size, rank=rank, world_size=world_size))
    kw = dict(name=name, size=size, train=train, augment=augment, seed=seed, threads=workers,
              device_id=_device_id(dev) if dev.type == "cuda" else None, dtype=dtype,
              channels_last=channels_last, skipped=skipped)
    if hasattr(split, "images"):
        return DaliArrayLoader(split.images, split.labels, sampler, **kw)
    return DaliFolderLoader(split.samples, sampler, skip_corrupt=skip_corrupt, **kw)

