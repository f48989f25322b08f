"""Fine-grained data sets in their distributed layouts: ``cub200``, ``aircraft``, ``cars``.

Nothing is downloaded: each reader checks the files it needs and raises a one-line DataError
naming the first missing one. Splits are the published ones (train / test; the test split is
what these runs evaluate on).

cub200
    The ``CUB_200_2011`` archive as extracted (``--data-dir`` is that folder or its parent):
    ``images.txt`` (``<id> <relative path>``), ``train_test_split.txt`` (``<id> <1 train | 0
    test>``), ``image_class_labels.txt`` (``<id> <class 1..200>``), ``images/<class>/<file>``;
    class names from ``classes.txt`` (``<class> <name>``) when present. Class index = class id - 1.
aircraft
    torchvision's ``FGVCAircraft`` layout, read by torchvision's own class (``download=False``):
    ``fgvc-aircraft-2013b/data/{variants.txt, images_variant_trainval.txt,
    images_variant_test.txt, images/<id>.jpg}`` under ``--data-dir`` (or ``--data-dir`` is
    ``fgvc-aircraft-2013b``). The 100 variants; train = trainval (6,667), test (3,333).
cars
    torchvision's ``StanfordCars`` layout, read by torchvision's own class (``download=False``,
    needs scipy): ``stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat,
    cars_test_annos_withlabels.mat, cars_train/, cars_test/}`` under ``--data-dir`` (or it is
    ``stanford_cars``). 196 classes; train 8,144, test 8,041.

Each returns ``(train, val, class_names)`` as :class:`~.folders.FolderSplit` s, the type the
image-folder sets use, so both loaders, ``--skip-corrupt`` and the DALI file reader's plumbing
see the same thing.
"""

from __future__ import annotations

import os

import torchvision

from ..errors import DataError
from .folders import FolderSplit

CUB_FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt")


def _need(path: str, what: str, fix: str) -> str:
    if not os.path.exists(path):
        raise DataError(f"{what}: missing {path}; {fix}")
    return path


def _check_images(samples: list[tuple[str, int]], name: str, fix: str) -> None:
    missing = [p for p, _ in samples if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{name}: image {missing[0]} is missing{more}; {fix}")


# ---------------------------------------------------------------------------- CUB-200-2011
def _read_table(path: str, name: str, fix: str) -> dict[int, str]:
    """``<id> <value>`` lines -> {id: value}; DataError naming the line on anything else."""
    table: dict[int, str] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(" ", 1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise DataError(f"{name}: {path} line {lineno} is not '<id> <value>'; {fix}")
            table[int(parts[0])] = parts[1].strip()
    return table


def load_cub200(data_dir: str):
    fix = "re-extract CUB_200_2011.tgz and pass its folder (or the parent) as --data-dir"
    root = data_dir
    if not os.path.isfile(os.path.join(root, "images.txt")) and os.path.isdir(os.path.join(root, "CUB_200_2011")):
        root = os.path.join(root, "CUB_200_2011")
    for fname in CUB_FILES:
        _need(os.path.join(root, fname), "cub200", fix)
    images = _read_table(os.path.join(root, "images.txt"), "cub200", fix)
    split = _read_table(os.path.join(root, "train_test_split.txt"), "cub200", fix)
    labels = _read_table(os.path.join(root, "image_class_labels.txt"), "cub200", fix)
    if not images:
        raise DataError(f"cub200: {os.path.join(root, 'images.txt')} lists no images; {fix}")
    for table, fname in ((split, "train_test_split.txt"), (labels, "image_class_labels.txt")):
        absent = sorted(set(images) - set(table))
        if absent:
            raise DataError(f"cub200: image id {absent[0]} of images.txt has no line in {fname}; {fix}")
    if any(not v.isdigit() or int(v) < 1 for v in labels.values()):
        raise DataError(f"cub200: image_class_labels.txt needs class ids 1, 2, ...; {fix}")
    num_classes = max(int(v) for v in labels.values())
    classes_file = os.path.join(root, "classes.txt")
    if os.path.isfile(classes_file):
        names = _read_table(classes_file, "cub200", fix)
        class_names = [names.get(i, str(i)) for i in range(1, num_classes + 1)]
    else:
        class_names = [str(i) for i in range(1, num_classes + 1)]
    train, test = [], []
    for image_id in sorted(images):
        sample = (os.path.join(root, "images", images[image_id]), int(labels[image_id]) - 1)
        (train if split[image_id].strip() == "1" else test).append(sample)
    if not train or not test:
        raise DataError(f"cub200: train_test_split.txt leaves the {'train' if not train else 'test'} split empty; "
                        f"{fix}")
    _check_images(train + test, "cub200", fix)
    return FolderSplit(train), FolderSplit(test), class_names


# ---------------------------------------------------------------------------- torchvision layouts
def _torchvision_root(data_dir: str, folder: str) -> str:
    """torchvision's ``root`` (the folder holding ``folder``); ``data_dir`` may be either."""
    if os.path.basename(os.path.normpath(data_dir)) == folder and not os.path.isdir(os.path.join(data_dir, folder)):
        return os.path.dirname(os.path.normpath(data_dir))
    return data_dir


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def load_aircraft(data_dir: str):
    root = _torchvision_root(data_dir, "fgvc-aircraft-2013b")
    data = os.path.join(root, "fgvc-aircraft-2013b", "data")
    fix = "extract fgvc-aircraft-2013b.tar.gz and pass the folder holding fgvc-aircraft-2013b/ as --data-dir"
    for fname in ("variants.txt", "images_variant_trainval.txt", "images_variant_test.txt", "images"):
        _need(os.path.join(data, fname), "aircraft", fix)
    splits = []
    for split in ("trainval", "test"):
        try:
            ds = torchvision.datasets.FGVCAircraft(root, split=split, annotation_level="variant", download=False)
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            raise DataError(f"aircraft: cannot read the {split} split under {data} ({_one_line(exc)}); {fix}") from None
        samples = list(zip(ds._image_files, ds._labels))
        if not samples:
            raise DataError(f"aircraft: images_variant_{split}.txt lists no images; {fix}")
        _check_images(samples, "aircraft", fix)
        splits.append(FolderSplit(samples))
        classes = list(ds.classes)
    return splits[0], splits[1], classes


def load_cars(data_dir: str):
    root = _torchvision_root(data_dir, "stanford_cars")
    base = os.path.join(root, "stanford_cars")
    fix = "arrange Stanford Cars as torchvision's StanfordCars expects and pass the folder holding stanford_cars/"
    for rel in ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat",
                "cars_train", "cars_test"):
        _need(os.path.join(base, rel), "cars", fix)
    try:
        import scipy.io  # noqa: F401  (torchvision's reader needs it)
    except ImportError:
        raise DataError("cars: reading Stanford Cars' .mat files needs scipy: pip install scipy") from None
    splits = []
    for split in ("train", "test"):
        try:
            ds = torchvision.datasets.StanfordCars(root, split=split, download=False)
        except Exception as exc:  # scipy's MatReadError, a wrong struct layout (KeyError, ValueError), ...
            raise DataError(f"cars: cannot read the {split} annotations under {base} ({_one_line(exc)}); "
                            f"{fix}") from None
        samples = [(path, int(label)) for path, label in ds._samples]
        if not samples:
            raise DataError(f"cars: the {split} annotations list no images; {fix}")
        classes = list(ds.classes)
        bad = [label for _, label in samples if not 0 <= label < len(classes)]
        if bad:
            raise DataError(f"cars: class {bad[0] + 1} of the {split} annotations is not in cars_meta.mat; {fix}")
        _check_images(samples, "cars", fix)
        splits.append(FolderSplit(samples))
    return splits[0], splits[1], classes


LOADERS = {"cub200": load_cub200, "aircraft": load_aircraft, "cars": load_cars}
