"""Data loading: the data set registry and ``build_loaders``.

    train_loader, val_loader, info = build_loaders("cifar100", "/data/cifar100", 100, seed=0)
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)     # or set_epoch(epoch, start_batch=k): resume at batch k
        for images, labels in train_loader: ...

Augmentation is reproducible from ``(seed, epoch, index)`` whatever the number of workers or
ranks (see :mod:`.sampling`). Every user-facing data problem raises a one-line
:class:`~adautomix_fast.errors.DataError`, including one met inside a worker process.

CIFAR-10/100 are read from the python pickles or from class folders of image files (decoded
once into the same in-memory arrays, :mod:`.decode`); a ``folder`` data set whose images are all
small (at most 64 px) is decoded into memory too and trains at its size with the small-image
recipe. ``train_subset=N`` trains on a fixed class-balanced subset (:mod:`.subset`).
``info.layout`` says what was read.

Two backends behind the same loader interface: ``torch`` (torchvision transforms in a
DataLoader, :mod:`.sampling`) and ``dali`` (NVIDIA DALI pipelines, :mod:`.dali`, decoding on
the GPU when the device is CUDA). ``backend="auto"`` picks dali when DALI imports and the device
is CUDA, torch otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import DataError, UsageError
from .arrays import CIFAR_SIZE, CIFAR_TITLE, ArraySplit, load_cifar, load_digits
from .dali import INSTALL_HINT, build_dali_loader, dali_import_error, resolve_backend
from .decode import SMALL_SIDE, common_side, decode_split, first_look_small, stack
from .finegrained import LOADERS
from .fingerprint import check_resume_data, split_fingerprint
from .folders import FolderSplit, check_headers, load_folder
from .sampling import EpochLoader, EvalBatchSampler, SeededDataset, SkipLog, TrainBatchSampler
from .subset import balanced_subset
from .transforms import FINEGRAINED, NORMALIZATION, AugmentRecipe, build_transforms

__all__ = ["DATASETS", "DATA_ENV", "BACKENDS", "DataInfo", "resolve_data_dir", "resolve_backend",
           "build_loaders", "dali_import_error", "INSTALL_HINT", "AugmentRecipe", "check_resume_data"]

BACKENDS = ("auto", "torch", "dali")

DATASETS = ("digits", "cifar10", "cifar100", "tiny-imagenet", "imagenet", "folder", "cub200", "aircraft", "cars")
DATA_ENV = "ADAUTOMIX_DATA"  # if --data-dir is not given: $ADAUTOMIX_DATA/<dataset name> is tried

# What --data-dir must point at, for the messages.
_LAYOUT = {
    "cifar10": "the extracted cifar-10-batches-py folder or its parent, or a folder with train/ and test/",
    "cifar100": "the extracted cifar-100-python folder or its parent, or a folder with train/ and test/",
    "tiny-imagenet": "tiny-imagenet-200, or a folder with train/ and val/",
    "imagenet": "a folder with train/ and val/",
    "folder": "a folder with train/ and val/",
    "cub200": "the extracted CUB_200_2011 folder (images.txt, train_test_split.txt, ...) or its parent",
    "aircraft": "the folder holding fgvc-aircraft-2013b/ (torchvision's FGVCAircraft layout)",
    "cars": "the folder holding stanford_cars/ (torchvision's StanfordCars layout)",
}


@dataclass
class DataInfo:
    """What the model and the logs need to know about a data set (sizes are of the whole splits)."""

    name: str
    num_classes: int
    image_size: int
    train_size: int
    val_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str]
    backend: str = "torch"  # the resolved data backend: "torch" or "dali"
    # Identifies the training split (data/fingerprint.py): a checkpoint records it with
    # train_size, so that a resume on other data is noticed. None: not known. With a subset,
    # the subset's (its images, or files, only).
    train_fingerprint: Optional[str] = None
    # What was read, for the run summary, e.g. "python pickles (cifar-10-batches-py)" or "class
    # folders train/ + test/ (JPEG), decoded into memory"; a folder of small images adds the
    # recipe it trains with.
    layout: Optional[str] = None
    # --train-subset: the subset's size (then train_size too) and the whole training split's size.
    train_subset: Optional[int] = None
    full_train_size: Optional[int] = None

    def describe(self) -> str:
        """The layout and the subset as one phrase for the run summary."""
        parts = [self.layout] if self.layout else []
        if self.train_subset is not None:
            parts.append(f"class-balanced subset of {self.train_subset} of {self.full_train_size} training images")
        return ", ".join(parts)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def resolve_data_dir(name: str, data_dir: str | None) -> str | None:
    """digits -> None (bundled). Others: ``data_dir``, else ``$ADAUTOMIX_DATA/<name>``, else DataError.

    A path that does not exist (given, or derived from the environment) is a DataError naming it.
    """
    _check_name(name)
    if name == "digits":
        return None
    if data_dir:
        path = os.path.abspath(os.path.expanduser(data_dir))
        if not os.path.isdir(path):
            raise DataError(
                f"data folder {path} does not exist; pass --data-dir /path/to/{name} ({_LAYOUT[name]})"
            )
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        path = os.path.abspath(os.path.join(os.path.expanduser(env), name))
        if not os.path.isdir(path):
            raise DataError(
                f"data folder {path} (from {DATA_ENV}={env}) does not exist; put {name} there "
                f"({_LAYOUT[name]}) or pass --data-dir /path/to/{name}"
            )
        return path
    raise DataError(
        f"{name} needs its files: pass --data-dir /path/to/{name} ({_LAYOUT[name]}) "
        f"or set {DATA_ENV}=/path/to/datasets"
    )


_FINEGRAINED_LAYOUT = {"cub200": "CUB_200_2011 lists", "aircraft": "fgvc-aircraft-2013b lists",
                      "cars": "stanford_cars .mat files"}


def _read_splits(name: str, root: str | None):
    """``(train, val, class_names, layout, decode)``; ``decode``: None, "cifar" (class folders
    of 32x32 CIFAR images to decode) or "small" (a folder to decode if its images are small)."""
    if name == "digits":
        return (*load_digits(), "scikit-learn digits (bundled)", None)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root)
    if name in FINEGRAINED:
        return (*LOADERS[name](root), _FINEGRAINED_LAYOUT[name], None)
    return (*load_folder(name, root), "small" if name == "folder" else None)


def _load_splits(name: str, root: str | None):
    """(train, val, class_names, layout, decode) for a data set; scans and validates everything it can."""
    train, val, class_names, layout, decode = _read_splits(name, root)
    # Training on a single class reaches 100% top-1 without learning anything, whichever reader
    # produced it (one class folder, one label in a CUB or CIFAR file, one variant listed).
    present = sorted(set(train.targets))
    if len(present) < 2:
        only = (f"one class ({class_names[present[0]]})" if present and 0 <= present[0] < len(class_names)
                else "no class")
        raise DataError(f"{name}: the training images in {root} are of {only} and a classifier needs at least two; "
                        "point --data-dir at a data set with two or more classes "
                        f"({_LAYOUT.get(name, 'a folder per class')})")
    return train, val, class_names, layout, decode


def _take(split, keep):
    """The items ``keep`` (sorted indices) of a split, as a split of the same kind."""
    if isinstance(split, ArraySplit):
        return ArraySplit(split.images[keep], split.labels[keep])
    return FolderSplit([split.samples[i] for i in keep])   # every file reader's split


def _decode(name: str, kind: str, train, val, *, workers: int, skip_corrupt: bool, skipped: SkipLog):
    """Decode the FolderSplits ``train`` and ``val`` into ArraySplits (:mod:`.decode`):
    ``(train, val, side, note)``, or None for a ``folder`` set that is not all small."""
    common = dict(dataset=name, workers=workers, skip_corrupt=skip_corrupt, skipped=skipped)
    if kind == "cifar":
        hint = (f"; {CIFAR_TITLE[name]} images are 32x32: point --data-dir at {CIFAR_TITLE[name]} itself, or train "
                "on other images with --dataset folder")
        out = [decode_split(split.samples, split=which, exact=CIFAR_SIZE, exact_hint=hint, **common)
               for split, which in ((train, "training"), (val, "validation"))]
    else:
        if not first_look_small(train.samples + val.samples):
            return None
        out = []
        for split, which in ((train, "training"), (val, "validation")):
            result = decode_split(split.samples, split=which, max_side=SMALL_SIDE, **common)
            if result is None:   # an image larger than SMALL_SIDE: the 224-px recipe
                return None
            out.append(result)
    side = CIFAR_SIZE[0] if kind == "cifar" else common_side([a for arrays, _ in out for a in arrays])
    (train_arrays, train_labels), (val_arrays, val_labels) = out
    train_images, train_labels, resized = stack(train_arrays, train_labels, side)
    val_images, val_labels, val_resized = stack(val_arrays, val_labels, side)
    resized += val_resized
    if kind == "cifar":
        note = "decoded into memory"
    else:
        note = (f"small images ({side}x{side} px" + (f"; {resized} of other sizes resized to it" if resized else "")
                + ") decoded into memory")
    return ArraySplit(train_images, train_labels), ArraySplit(val_images, val_labels), side, note


def build_loaders(
    name: str,
    data_dir: str | None,
    batch_size: int,
    *,
    eval_batch_size: int | None = None,
    workers: int = 2,
    seed: int = 0,
    image_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    backend: str = "auto",
    device: Optional[torch.device | str] = None,
    skip_corrupt: bool = False,
    channels_last: bool = False,
    augment: bool = True,
    dtype: torch.dtype = torch.float32,
    recipe: Optional[AugmentRecipe] = None,
    train_subset: Optional[int] = None,
):
    """Returns ``(train_loader, val_loader, info)``; validates the data before returning (a
    training split of fewer than two classes is a DataError). ``info.train_fingerprint``
    identifies the training split without reading an image (:mod:`.fingerprint`).

    train_loader: iterable of (images [B,3,H,W] of ``dtype``, labels int64 [B]); ``len()`` =
    batches per epoch of this rank; call ``set_epoch(epoch)`` before each epoch (order and
    augmentation follow from (seed, epoch)); the last incomplete batch is dropped. A shard with
    fewer images than ``batch_size`` is a DataError here. ``set_epoch(epoch, start_batch=k)``
    resumes mid-epoch: iteration yields batches k..len()-1 of that epoch, the same ones (order,
    samples, augmentation) as a whole epoch, without reading the first k; ``len()`` is unchanged,
    ``remaining()`` is ``len() - k``; k outside [0, len()] is a ValueError. The val loader
    accepts ``start_batch`` and ignores it.
    val_loader: every image of this rank's contiguous shard of the val split exactly once, in
    order, last partial batch kept.

    backend: "torch", "dali", or "auto" (dali when DALI imports and ``device`` is CUDA);
    ``info.backend`` is the one used. ``device`` (default cpu) is where dali delivers the
    batches (torch: always on the CPU, ``pin_memory`` for a fast copy). skip_corrupt: skip
    unreadable image files (replaced in training, dropped in evaluation) instead of raising;
    each loader's ``skipped`` (shared) counts them. channels_last: dali returns channels-last
    images (a view of its NHWC output); the torch backend ignores it. augment=False gives the
    training split the evaluation transform (no random crop or flip): for tests. dtype:
    float32, or float16 with dali. recipe: an architecture recipe's crop, interpolation and
    RandAugment (:class:`~.transforms.AugmentRecipe`; torch backend only). train_subset: train
    on this many images of the training split, a fixed class-balanced choice independent of
    ``seed`` (:mod:`.subset`; ``info.train_subset``, ``info.full_train_size``); evaluation
    keeps the whole split. A subset larger than the split or smaller than its number of
    classes is a one-line DataError.

    Layouts: CIFAR class folders, and ``folder`` sets whose images are all at most 64 px, are
    decoded once into in-memory arrays (``workers`` processes) and then load like the CIFAR
    pickles; such a ``folder`` set trains at its images' size with the small-image recipe
    (pad crop + flip, evaluation as is). ``info.layout`` describes what was read.

    The DALI pipelines implement the published ResNet augmentation only: the fine-grained sets
    (resize, then a 0.5-1 crop) and any recipe run on the torch backend ("auto" picks it), and
    an explicit ``backend="dali"`` for them is a one-line UsageError naming ``--data-backend torch``.
    """
    _check_name(name)
    if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
        raise UsageError(f"batch sizes must be at least 1 (got {batch_size}, {eval_batch_size}); fix --batch-size")
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more (got {workers})")
    if image_size is not None and image_size < 1:
        raise UsageError(f"--img-size must be at least 1 (got {image_size})")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    recipe = recipe or AugmentRecipe()
    torch_only = name in FINEGRAINED or not recipe.is_default
    if torch_only and backend == "dali":
        if name in FINEGRAINED:
            what = f"the {name} crops (resize + scaled crops)"
        elif recipe.augment:
            what = f"--augment {recipe.augment} (a PIL policy per image)"
        else:
            what = "the architecture recipes' augmentation (resize + scaled crops, RandAugment)"
        raise UsageError(f"--data-backend dali does not implement {what}; use --data-backend torch")
    resolved = "torch" if torch_only and backend in ("auto", "torch") else resolve_backend(backend, device)

    root = resolve_data_dir(name, data_dir)
    where = root or "the bundled digits set"
    train_split, val_split, class_names, layout, decode = _load_splits(name, root)
    full_train_size = len(train_split)
    if train_subset is not None:
        # Chosen before decoding: a subset run decodes only its own training images.
        train_split = _take(train_split, balanced_subset(train_split.targets, train_subset, name, where))
    skipped = SkipLog()
    small_native = None
    if decode is not None:
        # Decoding reads every file whole and checks its end marker: what check_headers does.
        decoded = _decode(name, decode, train_split, val_split, workers=workers, skip_corrupt=skip_corrupt,
                          skipped=skipped)
        if decoded is not None:
            train_split, val_split, side, note = decoded
            layout = f"{layout}, {note}"
            small_native = side if decode == "small" else None
    if not skip_corrupt and hasattr(val_split, "samples"):
        check_headers(val_split.samples, "validation")
    train_tf, eval_tf, size = build_transforms(name, image_size, recipe, small_native)
    if small_native is not None:
        how = f"--train-crop {recipe.train_crop}" if recipe.train_crop else "pad crop + flip"
        layout += f", trained at {size} px with the small-image recipe ({how})"

    train_sampler = TrainBatchSampler(len(train_split), batch_size, seed=seed, rank=rank, world_size=world_size)
    if len(train_sampler) == 0:
        shard = f" of this rank's shard (rank {rank} of {world_size})" if world_size > 1 else ""
        raise DataError(
            f"--batch-size {batch_size} is larger than the {train_sampler.shard_size} training images{shard} "
            f"in {where}; use --batch-size {max(1, train_sampler.shard_size)} or less"
        )
    if resolved == "dali":
        common = dict(batch_size=batch_size, size=size, seed=seed, rank=rank, world_size=world_size,
                      workers=workers, device=device, dtype=dtype, channels_last=channels_last,
                      skip_corrupt=skip_corrupt, skipped=skipped)
        train_loader = build_dali_loader(name, train_split, train=True, augment=augment, **common)
        common["batch_size"] = eval_batch_size or batch_size
        val_loader = build_dali_loader(name, val_split, train=False, augment=False, **common)
    else:
        if dtype != torch.float32:
            raise UsageError(f"the torch data backend outputs float32 images, not {dtype}")
        val_sampler = EvalBatchSampler(len(val_split), eval_batch_size or batch_size, rank=rank,
                                       world_size=world_size)
        common = dict(workers=workers, pin_memory=pin_memory, seed=seed, skipped=skipped)
        train_loader = EpochLoader(SeededDataset(train_split, train_tf if augment else eval_tf, skip_corrupt),
                                   train_sampler, **common)
        train_loader.plain_transform = eval_tf
        val_loader = EpochLoader(SeededDataset(val_split, eval_tf, skip_corrupt), val_sampler, **common)
    mean, std = NORMALIZATION[name]
    info = DataInfo(
        name=name,
        num_classes=len(class_names),
        image_size=size,
        train_size=len(train_split),
        val_size=len(val_split),
        mean=tuple(mean),
        std=tuple(std),
        class_names=list(class_names),
        backend=resolved,
        train_fingerprint=split_fingerprint(train_split),
        layout=layout,
        train_subset=train_subset,
        full_train_size=full_train_size,
    )
    return train_loader, val_loader, info
