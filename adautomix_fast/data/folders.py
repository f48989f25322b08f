"""Image-folder data sets: ``tiny-imagenet``, ``imagenet`` and ``folder``.

Layout: ``<root>/train/<class>/**/<image>`` and ``<root>/<eval>/<class>/**/<image>``, where the
evaluation split ``<eval>`` is whichever one of ``val``, ``valid``, ``validation`` or ``test``
exists (:func:`find_eval_split`; tiny-imagenet: ``val``, since its archive also holds an unlabelled
``test/``). Class indices are torchvision ``ImageFolder(root/"train")``'s (sorted class folder
names; we call its own ``find_classes``/``make_dataset`` so the two cannot drift), and the
evaluation folders map to the same indices. For tiny-imagenet the raw ``tiny-imagenet-200``
layout is accepted as well: its ``train/<wnid>/images/*.JPEG`` already is ImageFolder-compatible,
and ``val/images/*`` is labelled by ``val/val_annotations.txt``.

Everything is scanned and checked when the loaders are built (before any training); only a
corrupt image is found late, when it is decoded, and it is then reported by path.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset

from ..errors import DataError

_EXTS = " ".join(IMG_EXTENSIONS)


def _clean(exc: BaseException) -> str:
    """An exception as one line (PIL messages are short, but never trust a newline in a log)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class UnreadableImage(DataError):
    """An image file that cannot be decoded (or vanished); ``path`` and a short ``reason``.

    ``--skip-corrupt`` skips exactly these (both backends); every other DataError still stops.
    """

    def __init__(self, message: str, path: str, reason: str):
        super().__init__(message)
        self.path = path
        self.reason = reason


def open_rgb(path: str) -> Image.Image:
    """Decode ``path`` as RGB like ImageFolder's pil_loader, raising UnreadableImage on a bad file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode inside the try
    except FileNotFoundError:
        raise UnreadableImage(f"image file {path} disappeared after the data folder was scanned; "
                              "restore it and restart", path, "file disappeared") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError and "image file is truncated" are OSErrors.
        reason = f"PIL: {_clean(exc)}"
        raise UnreadableImage(f"corrupt image file {path} ({reason}); remove or replace it", path, reason) from None


def header_problem(path: str) -> str | None:
    """Why ``path`` cannot be a whole image, read from its first and last bytes only (no decode):
    PIL does not recognise its header, or a JPEG/PNG file lacks its end marker (a truncated copy).
    None for a file that looks whole."""
    try:
        with Image.open(path) as img:
            fmt = img.format
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 32))
            tail = f.read()
    except FileNotFoundError:
        return "file disappeared"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"PIL: {_clean(exc)}"
    # JPEG ends with EOI (FF D9), possibly followed by padding; PNG with its IEND chunk.
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG: no end-of-image marker"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG: no IEND chunk"
    return None


def check_headers(samples: list[tuple[str, int]], split: str, workers: int = 8) -> None:
    """DataError naming the first file (and the count) of ``samples`` that `header_problem`
    rejects: run on the validation files before the first step, so that a broken one is
    reported at once instead of after a whole training epoch."""
    paths = [p for p, _ in samples]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:  # file I/O, not CPU
        problems = [(p, r) for p, r in zip(paths, pool.map(header_problem, paths)) if r is not None]
    if problems:
        path, reason = problems[0]
        more = f" (and {len(problems) - 1} more {split} files)" if len(problems) > 1 else ""
        raise UnreadableImage(f"corrupt {split} image file {path} ({reason}){more}; remove or replace it, or pass "
                              "--skip-corrupt to leave such files out", path, reason)


class FolderSplit(Dataset):
    """``samples`` = [(path, label)]; item = (PIL RGB image, int label)."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return open_rgb(path), label


def _has_loose_images(split_dir: str) -> bool:
    with os.scandir(split_dir) as it:
        return any(e.is_file() and has_file_allowed_extension(e.name, IMG_EXTENSIONS) for e in it)


def check_no_revisited_folders(split_dir: str) -> None:
    """DataError naming the link when a symbolic link leads the scan into a folder it already
    visited (a loop such as ``ln -s .. train/c0/up``, or a second class folder's images under
    another label). ImageFolder's scan follows links and would count such images again, under the
    linking folder's class; links to files, or to folders outside the tree, are fine."""
    seen: dict[str, str] = {}
    for root, _dirs, _files in os.walk(split_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            raise DataError(f"symbolic link {root} leads to {real}, which the scan of {split_dir} already visited "
                            f"(as {seen[real]}); its images would be counted twice or under another class: "
                            "remove the link")
        seen[real] = root


def _scan(split_dir: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """ImageFolder's samples for ``class_to_idx``; DataError if any class folder has no image."""
    check_no_revisited_folders(split_dir)
    samples = make_dataset(split_dir, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(
            f"empty data folder {split_dir}: its class folders hold no images ({_EXTS}); "
            f"put the images in {split_dir}/<class>/"
        )
    present = {label for _, label in samples}
    empty = [c for c, i in sorted(class_to_idx.items()) if i not in present]
    if empty:
        path = os.path.join(split_dir, empty[0])
        more = f" (and {len(empty) - 1} more class folders)" if len(empty) > 1 else ""
        raise DataError(f"class folder {path} has no images{more} ({_EXTS}); add images or remove the folder")
    return samples


def _any_subdir(path: str) -> bool:
    # find_classes raises FileNotFoundError("Couldn't find any class folder") on none; we want our message.
    with os.scandir(path) as it:
        return any(e.is_dir() for e in it)


def _class_folders(split_dir: str) -> list[str]:
    """Sorted class folder names of a split; DataError if there are none."""
    classes, _ = find_classes(split_dir) if _any_subdir(split_dir) else ([], {})
    if not classes:
        if _has_loose_images(split_dir):
            raise DataError(
                f"empty data folder {split_dir}: images lie directly in it but there are no class folders; "
                f"sort them into {split_dir}/<class>/ (ImageFolder layout)"
            )
        raise DataError(f"empty data folder {split_dir}: no class folders; put the images in {split_dir}/<class>/")
    return classes


# The names an evaluation split goes by: torchvision/ImageNet say val, Kaggle and fastai exports
# of CIFAR say test, Hugging Face exports valid or validation.
EVAL_SPLITS = ("val", "valid", "validation", "test")


def _split_dir(root: str, split: str, name: str) -> str:
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(
            f"{name}: missing split folder {path}; {root} must contain train/ and val/, each with one "
            f"folder of images per class"
        )
    return path


def find_eval_split(root: str, name: str, names: tuple[str, ...] = EVAL_SPLITS) -> str:
    """The evaluation split folder of ``root``: the one of ``names`` that exists. Several that
    hold class folders are ambiguous (which one is the benchmark's?): a DataError naming them. A
    folder without class folders beside a labelled one is not a split (ImageNet's unlabelled
    ``test/``) and is passed over."""
    present = [n for n in names if os.path.isdir(os.path.join(root, n))]
    if not present:
        alternatives = ", ".join(f"{n}/" for n in names[1:-1]) + f" or {names[-1]}/"
        raise DataError(f"{name}: no evaluation split in {root}: add {os.path.join(root, names[0])} "
                        f"(or {alternatives}) with one folder of images per class, beside train/")
    if len(present) > 1:
        labelled = [n for n in present if _any_subdir(os.path.join(root, n))]
        if len(labelled) != 1:
            listed = " and ".join(f"{n}/" for n in (labelled or present))
            raise DataError(f"{name}: {root} holds several evaluation splits ({listed}); keep one of them "
                            f"(move or rename the others) so that the run is evaluated on a known split")
        present = labelled
    return os.path.join(root, present[0])


def scan_tree(train_dir: str, val_dir: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    """``(train samples, val samples, classes)`` of a class-folder tree, validated: at least two
    class folders, none empty, every val class also a train class."""
    classes = _class_folders(train_dir)
    if len(classes) < 2:
        # One class trains to a meaningless 100% top-1: every prediction is right.
        raise DataError(f"{train_dir} holds one class folder ({classes[0]}) and a classifier needs at least two; "
                        f"put each class's images in a folder of its own under {train_dir}/ (ImageFolder layout)")
    class_to_idx = {c: i for i, c in enumerate(classes)}  # == ImageFolder(train_dir).class_to_idx
    return _scan(train_dir, class_to_idx), _scan_val(val_dir, train_dir, class_to_idx), classes


def _scan_val(val_dir: str, train_dir: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    val_classes = _class_folders(val_dir)
    unknown = [c for c in val_classes if c not in class_to_idx]
    if unknown:
        raise DataError(
            f"{os.path.basename(val_dir)} class folder {os.path.join(val_dir, unknown[0])} has no counterpart in "
            f"{train_dir}; rename it to a training class or remove it"
        )
    return _scan(val_dir, {c: class_to_idx[c] for c in val_classes})


def tree_formats(samples: list[tuple[str, int]]) -> str:
    """The image formats of a file list as its extensions say, e.g. "JPEG" or "JPEG, PNG" (for
    the run summary; nothing is read)."""
    names = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WebP", ".tif": "TIFF",
             ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PGM", ".pbm": "PBM"}
    found = {names.get(os.path.splitext(p)[1].lower(), os.path.splitext(p)[1].lstrip(".").upper())
             for p, _ in samples}
    return ", ".join(sorted(found))


def _tiny_raw_val(val_dir: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """tiny-imagenet-200's ``val/images/*`` labelled by ``val/val_annotations.txt`` (file order)."""
    ann = os.path.join(val_dir, "val_annotations.txt")
    samples = []
    with open(ann) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split("\t")
            if not line.strip():
                continue
            if len(parts) < 2:
                raise DataError(f"{ann} line {lineno} is not '<file>\\t<wnid>\\t...'; re-extract tiny-imagenet-200.zip")
            fname, wnid = parts[0].strip(), parts[1].strip()
            path = os.path.join(val_dir, "images", fname)
            if wnid not in class_to_idx:
                raise DataError(
                    f"{ann} line {lineno}: class {wnid} has no folder in {os.path.dirname(val_dir)}/train; "
                    f"re-extract tiny-imagenet-200.zip"
                )
            if not os.path.isfile(path):
                raise DataError(f"{ann} line {lineno} names a missing image {path}; re-extract tiny-imagenet-200.zip")
            samples.append((path, class_to_idx[wnid]))
    if not samples:
        raise DataError(f"empty data folder {val_dir}: {ann} lists no images; re-extract tiny-imagenet-200.zip")
    return samples


def tree_root(name: str, data_dir: str) -> str:
    """The folder holding ``train/`` (tiny-imagenet: also the parent of the extracted zip)."""
    if name == "tiny-imagenet" and not os.path.isdir(os.path.join(data_dir, "train")):
        nested = os.path.join(data_dir, "tiny-imagenet-200")
        if os.path.isdir(os.path.join(nested, "train")):
            return nested  # accept the parent of the extracted zip too
    return data_dir


def load_folder(name: str, data_dir: str):
    """Scan and validate ``data_dir``; return ``(train, val, class_names, layout)``: FolderSplits
    and the layout read, for the run summary (e.g. "class folders train/ + val/ (JPEG)")."""
    root = tree_root(name, data_dir)
    train_dir = _split_dir(root, "train", name)
    if name == "tiny-imagenet":
        val_dir = _split_dir(root, "val", name)
    else:
        val_dir = find_eval_split(root, name)

    if name == "tiny-imagenet" and os.path.isfile(os.path.join(val_dir, "val_annotations.txt")):
        classes = _class_folders(train_dir)
        if len(classes) < 2:
            raise DataError(f"{train_dir} holds one class folder ({classes[0]}) and a classifier needs at least two; "
                            f"put each class's images in a folder of its own under {train_dir}/ (ImageFolder layout)")
        class_to_idx = {c: i for i, c in enumerate(classes)}
        train = _scan(train_dir, class_to_idx)
        val = _tiny_raw_val(val_dir, class_to_idx)
        layout = "tiny-imagenet-200 as extracted (val/val_annotations.txt)"
    else:
        train, val, classes = scan_tree(train_dir, val_dir)
        layout = f"class folders train/ + {os.path.basename(val_dir)}/ ({tree_formats(train + val)})"
    return FolderSplit(train), FolderSplit(val), classes, layout
