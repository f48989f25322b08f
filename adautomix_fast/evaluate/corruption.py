"""The ``corruption`` suite: top-1 under the 19 common corruptions at 5 severities (Table 4).

Three sources of corrupted images, one interface (``cells()`` and ``batches(corruption, severity)``):

* ``NpyCorruptions``: the CIFAR-10-C / CIFAR-100-C layout, a folder of ``<corruption>.npy`` files,
  each uint8 [5n, H, W, 3] (severities 1..5 of the same n test images stacked in order), and
  ``labels.npy`` [5n]. Files are memory-mapped (all of CIFAR-100-C is about 2.9 GB).
* ``FolderCorruptions``: the ImageNet-C layout, ``<corruption>/<severity>/<class>/<image>``, class
  folders named as the run's classes (ImageNet's wnids).
* ``SynthesisedCorruptions``: no files: the run's own test images (the bundled digits too) are
  corrupted on the fly with ``imagecorruptions`` (the maintained ``imagecorruptions-imaug`` fork:
  the original 2020 package no longer imports with current setuptools and scikit-image), each
  image seeded from (seed, corruption, severity, image index). Images under 32 px are corrupted at
  a whole multiple of their size of at least 32 px and box-averaged back.

The score (docs/evaluation.md, What each suite computes): the table per corruption and
severity, the pooled mean over every evaluated (corruption, severity) cell (the released score:
all 19 files equally, not mCE), and the mean over the 15 standard corruptions.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError, UsageError

# Hendrycks & Dietterich's 15 standard corruptions, then the 4 extra ("validation") ones; the
# order of imagecorruptions.get_corruption_names("all").
STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
            "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL = STANDARD + EXTRA
SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def check_selection(corruptions: Optional[tuple[str, ...]],
                    severities: tuple[int, ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    corruptions = ALL if corruptions is None else tuple(corruptions)
    unknown = [c for c in corruptions if c not in ALL]
    if unknown:
        raise UsageError(f"--corruptions: unknown {', '.join(unknown)}; choose from {', '.join(ALL)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise UsageError(f"--severities must be among 1..5 (got {', '.join(map(str, severities)) or 'none'})")
    return corruptions, tuple(severities)


def _to_input(images_u8: torch.Tensor, ctx) -> torch.Tensor:
    """uint8 [B,H,W,3] -> normalised float [B,3,H,W] on the context's device (the data set's statistics)."""
    x = images_u8.to(ctx.device).permute(0, 3, 1, 2).float().div_(255.0)
    return ctx.normalize(x)


class NpyCorruptions:
    """The CIFAR-10-C / CIFAR-100-C folder (``<corruption>.npy`` + ``labels.npy``), memory-mapped."""

    kind = "npy"

    def __init__(self, folder: str, corruptions, severities, image_size: int, num_classes: int,
                 limit: Optional[int]):
        self.folder, self.corruptions, self.severities, self.limit = folder, corruptions, severities, limit
        labels_path = os.path.join(folder, "labels.npy")
        missing = [c for c in corruptions if not os.path.isfile(os.path.join(folder, c + ".npy"))]
        if missing:
            raise DataError(f"--corruption-dir {folder}: missing {', '.join(m + '.npy' for m in missing)}; "
                            "add the files or choose the ones present with --corruptions")
        self.labels = self._load(labels_path)
        if self.labels.ndim != 1 or len(self.labels) % 5 or len(self.labels) == 0:
            raise DataError(f"{labels_path}: expected labels of shape [5n] (5 severities of n images), "
                            f"got {list(self.labels.shape)}; re-extract the CIFAR-C archive")
        if int(self.labels.max()) >= num_classes or int(self.labels.min()) < 0:
            raise DataError(f"{labels_path}: labels outside 0..{num_classes - 1}; these corruptions belong to "
                            "another data set than the checkpoint's")
        self.n = len(self.labels) // 5
        self.arrays = {}
        for c in corruptions:
            path = os.path.join(folder, c + ".npy")
            arr = self._load(path)
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] != len(self.labels):
                raise DataError(f"{path}: expected uint8 [{len(self.labels)}, H, W, 3], got {arr.dtype} "
                                f"{list(arr.shape)}; re-extract the CIFAR-C archive")
            if arr.shape[1:3] != (image_size, image_size):
                raise DataError(f"{path}: images are {arr.shape[1]}x{arr.shape[2]} but the checkpoint was trained "
                                f"on {image_size}x{image_size}; use the corruptions of its data set")
            self.arrays[c] = arr

    @staticmethod
    def _load(path: str) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable .npy file ({str(e).splitlines()[0]}); re-extract it") from None

    def describe(self) -> dict:
        return {"source": "files", "layout": "CIFAR-C (.npy)", "folder": self.folder, "images_per_cell": self.count()}

    def count(self) -> int:
        return self.n if self.limit is None else min(self.n, self.limit)

    def batches(self, corruption: str, severity: int, ctx) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        arr, first = self.arrays[corruption], (severity - 1) * self.n
        bs = ctx.options.batch_size
        for start in range(0, self.count(), bs):
            stop = min(start + bs, self.count())
            images = torch.from_numpy(np.array(arr[first + start:first + stop]))   # a writable copy of the mapped slice
            labels = torch.from_numpy(np.array(self.labels[first + start:first + stop], dtype=np.int64))
            yield _to_input(images, ctx), labels.to(ctx.device)


class FolderCorruptions:
    """The ImageNet-C layout: ``<corruption>/<severity>/<class>/<image>``, classes named as the run's."""

    kind = "folders"

    def __init__(self, folder: str, corruptions, severities, image_size: int, class_names: list[str],
                 limit: Optional[int]):
        self.folder, self.corruptions, self.severities, self.limit = folder, corruptions, severities, limit
        self.image_size = image_size
        index = {name: i for i, name in enumerate(class_names)}
        self.samples: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for c in corruptions:
            for s in severities:
                cell = os.path.join(folder, c, str(s))
                if not os.path.isdir(cell):
                    raise DataError(f"--corruption-dir {folder}: missing folder {c}/{s}; add it or choose what is "
                                    "present with --corruptions / --severities")
                samples = []
                for cls in sorted(os.listdir(cell)):
                    path = os.path.join(cell, cls)
                    if not os.path.isdir(path):
                        continue
                    if cls not in index:
                        raise DataError(f"{path}: class {cls!r} is not one of the checkpoint's classes; "
                                        "use the corruptions of its data set")
                    samples += [(os.path.join(path, f), index[cls]) for f in sorted(os.listdir(path))
                                if f.lower().endswith(IMAGE_EXTENSIONS)]
                if not samples:
                    raise DataError(f"{cell}: no images in <class>/ folders; expected the ImageNet-C layout "
                                    "<corruption>/<severity>/<class>/<image>")
                self.samples[(c, s)] = samples if limit is None else samples[:limit]

    def describe(self) -> dict:
        counts = {len(v) for v in self.samples.values()}
        return {"source": "files", "layout": "ImageNet-C (folders)", "folder": self.folder,
                "images_per_cell": counts.pop() if len(counts) == 1 else sorted(counts)}

    def batches(self, corruption: str, severity: int, ctx) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples, size = self.samples[(corruption, severity)], self.image_size
        bs = ctx.options.batch_size
        for start in range(0, len(samples), bs):
            images, labels = [], []
            for path, label in samples[start:start + bs]:
                try:
                    with Image.open(path) as im:
                        im = im.convert("RGB")
                        if im.size != (size, size):
                            # ImageNet-C images are 224 px center crops already; anything else is
                            # resized (shorter side) and center-cropped to the run's size.
                            im = _resize_center_crop(im, size)
                        images.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()))
                except OSError as e:
                    raise DataError(f"{path}: unreadable image ({e}); replace or remove it") from None
                labels.append(label)
            yield _to_input(torch.stack(images), ctx), torch.tensor(labels, device=ctx.device)


def _resize_center_crop(im, size: int):
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def open_corruption_dir(folder: str, corruptions, severities, image_size: int, class_names, limit):
    """The reader for ``folder``: CIFAR-C (.npy files) or ImageNet-C (folders); a one-line
    DataError when it is neither."""
    if not os.path.isdir(folder):
        raise DataError(f"--corruption-dir {folder}: no such folder; pass the CIFAR-C or ImageNet-C folder, "
                        "or leave the flag out to synthesise corruptions")
    if os.path.isfile(os.path.join(folder, "labels.npy")):
        return NpyCorruptions(folder, corruptions, severities, image_size, len(class_names), limit)
    if any(os.path.isdir(os.path.join(folder, c)) for c in ALL):
        return FolderCorruptions(folder, corruptions, severities, image_size, class_names, limit)
    raise DataError(f"--corruption-dir {folder}: neither the CIFAR-C layout (<corruption>.npy + labels.npy) nor "
                    "the ImageNet-C layout (<corruption>/<1-5>/<class>/<image>)")


MIN_SIZE = 32   # imagecorruptions refuses smaller images


def _corrupt_one(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """One uint8 [H,W,3] image. Images under 32 px (the 16 px digits demo) are corrupted at a
    whole multiple of their size of at least 32 px (bilinear up) and brought back by averaging
    each block (box down), since imagecorruptions works from 32 px on."""
    from imagecorruptions import corrupt

    h, w = image.shape[:2]
    scale = -(-MIN_SIZE // min(h, w)) if min(h, w) < MIN_SIZE else 1
    work = image if scale == 1 else np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.BILINEAR))
    kwargs = {"seed": seed} if corruption in ("glass_blur", "impulse_noise") else {}
    np.random.seed(seed)
    # spatter divides by a maximum that is 0 on uniformly dark images (the digits'
    # background); the library then casts NaN to uint8 (0). Quiet, as a library's own
    # arithmetic, not the user's problem.
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = corrupt(np.ascontiguousarray(work), corruption_name=corruption, severity=severity, **kwargs)
    if scale > 1:
        out = np.asarray(Image.fromarray(out).resize((w, h), Image.BOX))
    return out


def corrupt_images(images: np.ndarray, corruption: str, severity: int, first_index: int, seed: int) -> np.ndarray:
    """uint8 [B,H,W,3] -> the same images corrupted, image i seeded from (seed, corruption,
    severity, first_index + i): the result does not depend on the batch size or the process.

    imagecorruptions draws from numpy's global generator (reseeded here per image; the caller
    restores it), except glass_blur and impulse_noise, which take their own seed (unseeded
    otherwise). Top-level so that worker processes can run it.
    """
    c = ALL.index(corruption)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        image_seed = int(np.random.SeedSequence([seed, c, severity, first_index + i]).generate_state(1)[0])
        out[i] = _corrupt_one(image, corruption, severity, image_seed)
    return out


class SynthesisedCorruptions:
    """Corruptions of the run's own test images, made on the fly with ``imagecorruptions``.

    With ``workers`` > 0 the images are corrupted in that many worker processes (spawned: they
    only run numpy, OpenCV and scikit-image) while the main process scores what is ready.
    """

    kind = "synthesised"

    def __init__(self, corruptions, severities, image_size: int, seed: int, workers: int = 0):
        self.image_size = image_size
        try:
            import imagecorruptions  # noqa: F401
        except ImportError as e:
            raise UsageError(f"synthesised corruptions need the imagecorruptions module ({e}); "
                             "pip install imagecorruptions-imaug, or pass --corruption-dir") from None
        self.corruptions, self.severities, self.seed, self.workers = corruptions, severities, seed, workers

    def describe(self) -> dict:
        try:
            version = metadata.version("imagecorruptions-imaug")
            package = "imagecorruptions-imaug"
        except metadata.PackageNotFoundError:
            package, version = "imagecorruptions", metadata.version("imagecorruptions")
        scale = -(-MIN_SIZE // self.image_size) if self.image_size < MIN_SIZE else 1
        return {"source": "synthesised", "library": f"{package} {version}", "seed": self.seed,
                "synthesised_at": self.image_size * scale}

    def pool(self):
        """A process pool for the synthesis, or None to corrupt in this process."""
        if self.workers < 1:
            return None
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))


def _to_uint8(x: torch.Tensor, ctx) -> np.ndarray:
    """Normalised [B,3,H,W] -> uint8 [B,H,W,3] (exact for 8-bit data sets: the round trip of the
    normalisation is within 0.5/255)."""
    pixels = ctx.denormalize(x).mul(255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def run(ctx, reader=None) -> dict:
    """Top-1 (%) of the chosen head per corruption and severity, and the means.

    ``reader``: a reader made by ``prepare`` (so that bad files fail before any other suite
    runs); None makes it here.
    """
    if reader is None:
        reader = prepare(ctx)
    correct = {(c, s): 0 for c in reader.corruptions for s in reader.severities}
    totals = dict.fromkeys(correct, 0)
    extra: dict = {}
    if isinstance(reader, SynthesisedCorruptions):
        extra["clean_top1"] = _run_synthesised(ctx, reader, correct, totals)
    else:
        for c, s in tqdm(list(correct), desc="corruption", leave=False, dynamic_ncols=True,
                         disable=not ctx.options.progress):
            for x, y in reader.batches(c, s, ctx):
                correct[(c, s)] += int(ctx.logits(x).argmax(1).eq(y).sum())
                totals[(c, s)] += len(y)
    return summarise(correct, totals, reader, extra)


def _run_synthesised(ctx, reader: SynthesisedCorruptions, correct: dict, totals: dict) -> float:
    """One pass over the test set: every (corruption, severity) cell is made from each batch of
    clean images and scored. Returns the clean top-1 (%) of the same images."""
    cells = list(correct)
    bar = tqdm(total=ctx.num_images * len(cells), desc="corruption (synthesising)", leave=False,
               dynamic_ncols=True, disable=not ctx.options.progress, unit="img")
    state = np.random.get_state()   # imagecorruptions reseeds numpy's global generator
    pool = reader.pool()
    clean = 0
    try:
        for start, x, y in ctx.batches("corruption"):
            clean += int(ctx.logits(x).argmax(1).eq(y).sum())
            images = _to_uint8(x, ctx)
            if pool is None:
                made = (corrupt_images(images, c, s, start, reader.seed) for c, s in cells)
            else:   # submitted at once; scored in order while the workers go on
                futures = [pool.submit(corrupt_images, images, c, s, start, reader.seed) for c, s in cells]
                made = (f.result() for f in futures)
            for (c, s), corrupted in zip(cells, made):
                correct[(c, s)] += int(ctx.logits(_to_input(torch.from_numpy(corrupted), ctx)).argmax(1).eq(y).sum())
                totals[(c, s)] += len(y)
                bar.update(len(y))
    finally:
        np.random.set_state(state)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    return 100.0 * clean / max(ctx.num_images, 1)


def summarise(correct: dict, totals: dict, reader, extra: dict) -> dict:
    """The table (corruption -> severity -> top-1 %) and its means."""
    table = {c: {str(s): 100.0 * correct[(c, s)] / max(totals[(c, s)], 1) for s in reader.severities}
             for c in reader.corruptions}
    cells = [table[c][str(s)] for c in reader.corruptions for s in reader.severities]
    standard = [table[c][str(s)] for c in reader.corruptions if c in STANDARD for s in reader.severities]
    return {
        **reader.describe(),
        "corruptions": list(reader.corruptions),
        "severities": list(reader.severities),
        "top1": table,
        "per_corruption": {c: float(np.mean(list(table[c].values()))) for c in reader.corruptions},
        "per_severity": {str(s): float(np.mean([table[c][str(s)] for c in reader.corruptions]))
                         for s in reader.severities},
        "mean_all": float(np.mean(cells)),
        "mean_standard": float(np.mean(standard)) if standard else None,
        "cells": len(cells),
        "images": {f"{c}/{s}": totals[(c, s)] for c, s in totals},
        **extra,
    }


def prepare(ctx):
    """The reader for the context's options; checks the files (or the synthesis) up front."""
    opts = ctx.options
    corruptions, severities = check_selection(opts.corruptions, opts.severities)
    if opts.corruption_dir:
        return open_corruption_dir(opts.corruption_dir, corruptions, severities, ctx.info.image_size,
                                   ctx.info.class_names, opts.limit)
    return SynthesisedCorruptions(corruptions, severities, ctx.info.image_size, opts.seed, opts.workers)
