"""In-memory data sets: scikit-learn digits (bundled) and CIFAR-10/100 (python-pickle layout).

Each loader returns ``(train, val, class_names)`` where ``train``/``val`` are :class:`ArraySplit`
objects holding uint8 HWC images; indexing one gives ``(uint8 CHW tensor, int label)``.
"""

from __future__ import annotations

import codecs
import os
import pickle
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

try:  # numpy 2 moved the modules a pickle names; files written under numpy 1 name the old ones
    from numpy._core import multiarray as _np_multiarray, numeric as _np_numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray as _np_multiarray, numeric as _np_numeric

from ..errors import DataError

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


def _find_cifar_root(name: str, data_dir: str) -> str:
    """Accept the extracted folder itself or its parent."""
    spec = _CIFAR[name]
    for cand in (data_dir, os.path.join(data_dir, spec["folder"])):
        if os.path.isfile(os.path.join(cand, spec["train"][0])):
            return cand
    raise DataError(
        f"{name}: no {spec['folder']}/{spec['train'][0]} in {data_dir}; download {spec['archive']} "
        f"from {CIFAR_URL} and extract it there (tar xzf {spec['archive']} -C {data_dir})"
    )


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
    """CIFAR-10 (``name='cifar10'``) or CIFAR-100 fine labels (``'cifar100'``)."""
    spec = _CIFAR[name]
    root = _find_cifar_root(name, data_dir)
    meta_path = os.path.join(root, spec["meta"])
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(_unpickle(meta_path, name), spec["names"])]
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
