"""In-memory data sets: scikit-learn digits (bundled) and CIFAR-10/100.

:func:`load_digits` returns ``(train, val, class_names)`` where ``train``/``val`` are
:class:`ArraySplit` objects holding uint8 HWC images; indexing one gives ``(uint8 CHW tensor,
int label)``. CIFAR comes in two layouts (:func:`load_cifar`): the python pickles of the
official archives, read into ArraySplits here, or class folders of image files (``train/`` and
``test/`` or ``val/``, as fastai, Kaggle and Hugging Face exports hold it), scanned here and
decoded into the same arrays by :mod:`.decode`.
"""

from __future__ import annotations

import codecs
import os
import pickle
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

try:  # numpy 2 moved the modules a pickle names; files written under numpy 1 name the old ones
    from numpy._core import multiarray as _np_multiarray, numeric as _np_numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray as _np_multiarray, numeric as _np_numeric

from ..errors import DataError
from .folders import FolderSplit, _class_folders, _scan, _scan_val, find_eval_split, tree_formats

# The digits split is fixed, independent of the run seed, so every run (and every seed of a
# sweep) is evaluated on the same 360 images.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "val": ["test_batch"],
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "val": ["test"],
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
    },
}


# torchvision's ``CIFAR10(...).classes`` / ``CIFAR100(...).classes``: the label names of the
# archives' batches.meta / meta files, in label order. Both lists are in sorted order, so a
# class-folder tree named after them gets torchvision's indices from sorted folder names
# (ImageFolder's rule).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}
CIFAR_TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
CIFAR_SIZE = (32, 32)


class ArraySplit(Dataset):
    """Images as a uint8 ``[N, H, W, 3]`` array and int64 labels; item = (uint8 CHW tensor, int)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).contiguous()
        return image, int(self.labels[index])


def load_digits():
    """scikit-learn's 1,797 8x8 digits as 32x32 RGB uint8, split ~80/20 (stratified, fixed seed)."""
    # lazy: scikit-learn pulls in SciPy, about 1.5 s that every import of the package would pay
    # for a data set only the digits demo uses
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    # Values are 0..16; scale to 0..255 and upsample bilinearly so the CIFAR-sized networks and
    # the 32-px augmentation apply unchanged.
    x = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    gray = x.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    images = np.repeat(gray[..., None], 3, axis=-1)  # [N, 32, 32, 3]
    labels = digits.target.astype(np.int64)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_VAL_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    # Sorted so the validation order is the natural one (and stable across sklearn versions'
    # internal shuffles of the same selection).
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    names = [str(i) for i in range(10)]
    return ArraySplit(images[train_idx], labels[train_idx]), ArraySplit(images[val_idx], labels[val_idx]), names


def _get(d: dict, key: str) -> Any:
    """Pickles read with encoding='bytes' have bytes keys; accept str keys too."""
    if key.encode() in d:
        return d[key.encode()]
    return d[key]


# What a CIFAR python pickle may name: numpy's array, dtype and scalar rebuilders (under the
# module names numpy 1 and numpy 2 write, and protocol 5's buffer form), plain value and
# container types, and codecs.encode, with which Python 3 writes bytes at protocols 0-2.
# Python 2 files name ``__builtin__`` where Python 3 says ``builtins``.
_PLAIN_TYPES = {t.__name__: t for t in (dict, list, tuple, set, frozenset, bytes, bytearray, str, int, float,
                                        complex, bool)}
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _np_multiarray._reconstruct
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _np_multiarray.scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _np_numeric._frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    **{(module, n): t for module in ("builtins", "__builtin__") for n, t in _PLAIN_TYPES.items()},
}


class ForbiddenPickle(pickle.UnpicklingError):
    """A pickle names a global outside :data:`_ALLOWED_GLOBALS`: it would run code on loading."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.what = f"{module}.{name}"


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers only.

    ``pickle.load`` (torchvision's CIFAR reader uses it) calls whatever a file names, so a
    crafted ``data_batch_1`` could run any command; here naming anything else stops the load
    before it is called. The objects come from the table, never from an import the file chose.
    """

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenPickle(module, name) from None


def restricted_load(f, encoding: str = "bytes"):
    """``pickle.load(f, encoding=encoding)`` limited to numpy arrays and plain containers;
    :class:`ForbiddenPickle` for any other global the file names."""
    return _ArrayUnpickler(f, encoding=encoding).load()


def _unpickle(path: str, name: str) -> dict:
    spec = _CIFAR[name]
    if not os.path.isfile(path):
        raise DataError(
            f"{name}: missing file {path}; re-extract {spec['archive']} from {CIFAR_URL} into its parent folder"
        )
    try:
        with open(path, "rb") as f:
            d = restricted_load(f, encoding="bytes")  # like the official loader (Python 2 pickles)
        if not isinstance(d, dict):
            raise TypeError(f"expected a dict, got {type(d).__name__}")
        return d
    except ForbiddenPickle as exc:
        raise DataError(
            f"{name}: {path} is not a CIFAR data file: its pickle calls {exc.what}, which such a file never "
            f"needs (it could run code, so nothing in it was loaded); re-download {spec['archive']} from "
            f"{CIFAR_URL} and extract it"
        ) from None
    except Exception as exc:  # truncated download, wrong file: any unpickling failure
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(
            f"{name}: unreadable file {path} ({reason}); re-download {spec['archive']} from {CIFAR_URL} and extract it"
        ) from None


def _find_cifar_root(name: str, data_dir: str) -> Optional[str]:
    """The pickle folder: the extracted folder itself or its parent; None when neither holds it."""
    spec = _CIFAR[name]
    for cand in (data_dir, os.path.join(data_dir, spec["folder"])):
        if os.path.isfile(os.path.join(cand, spec["train"][0])):
            return cand
    return None


def _read_split(root: str, files: list[str], name: str) -> ArraySplit:
    spec = _CIFAR[name]
    images, labels = [], []
    for fname in files:
        path = os.path.join(root, fname)
        d = _unpickle(path, name)
        try:
            data = np.asarray(_get(d, "data"), dtype=np.uint8)
            lab = np.asarray(_get(d, spec["labels"]), dtype=np.int64)
        except KeyError as exc:
            raise DataError(
                f"{name}: {path} has no {exc} entry (is it the python version?); "
                f"re-download {spec['archive']} from {CIFAR_URL}"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise DataError(
                f"{name}: {path} holds data of shape {data.shape} and {len(lab)} labels, expected [N, 3072] "
                f"and N labels; re-download {spec['archive']} from {CIFAR_URL}"
            )
        # Rows are channel-major 3x32x32; store HWC like PIL/numpy images.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return ArraySplit(np.concatenate(images), np.concatenate(labels))


def load_cifar(name: str, data_dir: str):
    """CIFAR-10 (``name='cifar10'``) or CIFAR-100 fine labels (``'cifar100'``) in either layout:
    ``(train, val, class_names, layout, decode)``. Pickles: ArraySplits, ``decode`` None. Class
    folders: FolderSplits of the scanned files, ``decode`` "cifar" (build_loaders decodes them
    into ArraySplits, every image 32x32)."""
    spec = _CIFAR[name]
    root = _find_cifar_root(name, data_dir)
    if root is not None:
        train, val, names = _load_pickles(name, root)
        return train, val, names, f"python pickles ({os.path.basename(root.rstrip(os.sep)) or root})", None
    if os.path.isdir(os.path.join(data_dir, "train")):
        return _scan_cifar_tree(name, data_dir)
    raise DataError(
        f"{name}: neither {spec['folder']}/{spec['train'][0]} nor a train/ folder of class folders in {data_dir}; "
        f"download {spec['archive']} from {CIFAR_URL} and extract it there (tar xzf {spec['archive']} -C {data_dir}), "
        f"or point --data-dir at a folder with train/ and test/, one folder of images per class"
    )


def _load_pickles(name: str, root: str):
    spec = _CIFAR[name]
    meta_path = os.path.join(root, spec["meta"])
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in _get(_unpickle(meta_path, name), spec["names"])]
    except KeyError:
        raise DataError(
            f"{name}: {meta_path} has no {spec['names']} entry; re-download {spec['archive']} from {CIFAR_URL}"
        ) from None
    train = _read_split(root, spec["train"], name)
    val = _read_split(root, spec["val"], name)
    for split, files in ((train, spec["train"]), (val, spec["val"])):
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(names)):
            raise DataError(
                f"{name}: labels in {root}/{{{','.join(files)}}} fall outside the {len(names)} classes of "
                f"{meta_path}; re-download {spec['archive']} from {CIFAR_URL}"
            )
    return train, val, names


def cifar_class_order(name: str, folders: list[str], train_dir: str) -> tuple[list[str], list[str], str]:
    """``(folder order, class names, note)`` for the class folders of a CIFAR tree: the folder of
    label ``i`` is ``order[i]``.

    * torchvision's class names: sorted order, which is torchvision's label order (note "").
    * The decimal numbers 0..C-1 (an export by label index): label = the number, read
      numerically (sorted text would put 10 before 2), named with torchvision's names.
    * Other names: sorted order (ImageFolder's rule), named by the folders.

    Another number of class folders than the data set's classes is a DataError: a partial copy
    would train a classifier of other classes under CIFAR's name and statistics.
    """
    expected = list(CIFAR_CLASSES[name])
    title = CIFAR_TITLE[name]
    if len(folders) != len(expected):
        raise DataError(f"{name}: {train_dir} holds {len(folders)} class folders, {title} has {len(expected)}; "
                        f"point --data-dir at the whole {title}, or train on these classes with --dataset folder")
    if sorted(folders) == sorted(expected):
        return sorted(folders), expected, ""
    if all(f.isdigit() for f in folders) and sorted(int(f) for f in folders) == list(range(len(expected))):
        return sorted(folders, key=int), expected, f"numbered class folders read as {title} label indices"
    return sorted(folders), sorted(folders), "own class names, indices in sorted order"


def _scan_cifar_tree(name: str, data_dir: str):
    train_dir = os.path.join(data_dir, "train")
    val_dir = find_eval_split(data_dir, name)
    order, names, note = cifar_class_order(name, _class_folders(train_dir), train_dir)
    class_to_idx = {c: i for i, c in enumerate(order)}
    train = _scan(train_dir, class_to_idx)
    val = _scan_val(val_dir, train_dir, class_to_idx)
    layout = f"class folders train/ + {os.path.basename(val_dir)}/ ({tree_formats(train + val)})"
    if note:
        layout += f", {note}"
    return FolderSplit(train), FolderSplit(val), names, layout, "cifar"
