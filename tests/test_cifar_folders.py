"""CIFAR held as class folders, the evaluation split's names, ``folder`` data sets of small
images and ``--train-subset`` (CPU, tiny generated data; the DALI twins are in test_dali.py)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.datasets import ImageFolder

from adautomix_fast.config import Config, resolve
from adautomix_fast.data import build_loaders
from adautomix_fast.data.arrays import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_CLASSES, ArraySplit
from adautomix_fast.data.folders import FolderSplit
from adautomix_fast.data.subset import balanced_subset, quotas
from adautomix_fast.errors import DataError, UsageError

from cli_helpers import run_cli, single_error_line

# --------------------------------------------------------------------------- generated data


def _rows(images):
    """HWC uint8 images as the pickles' channel-major rows [N, 3072]."""
    return np.stack(images).transpose(0, 3, 1, 2).reshape(len(images), -1)


def _write_pickles(root, name, splits, classes):
    root.mkdir(parents=True)

    def dump(fname, obj):
        with open(root / fname, "wb") as f:
            pickle.dump(obj, f)

    (train_images, train_labels), (val_images, val_labels) = splits
    if name == "cifar10":
        for i, part in enumerate(np.array_split(np.arange(len(train_labels)), 5), 1):
            dump(f"data_batch_{i}", {b"data": _rows([train_images[j] for j in part]),
                                     b"labels": [train_labels[j] for j in part]})
        dump("test_batch", {b"data": _rows(val_images), b"labels": list(val_labels)})
        dump("batches.meta", {b"label_names": [c.encode() for c in classes]})
    else:
        dump("train", {b"data": _rows(train_images), b"fine_labels": list(train_labels)})
        dump("test", {b"data": _rows(val_images), b"fine_labels": list(val_labels)})
        dump("meta", {b"fine_label_names": [c.encode() for c in classes]})


def make_cifar_pair(tmp_path, name="cifar10", fmt="png", eval_name="test", per_class=(3, 1), seed=0):
    """The same random 32x32 images in both layouts: ``(pickle folder, class-folder tree)``.

    Class-major order with files named by position, so that the tree's sorted scan lists the
    images in the pickles' order. JPEG: the pickles hold the pixels PIL decodes from the files
    (what a pickle made from these files would hold)."""
    classes = CIFAR_CLASSES[name]
    rng = np.random.default_rng(seed)
    tree = tmp_path / f"{name}-{fmt}-{eval_name}"
    splits = []
    for split, n in (("train", per_class[0]), (eval_name, per_class[1])):
        images, labels = [], []
        for label, cls in enumerate(classes):
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                path = tree / split / cls / f"{i:04d}.{'jpg' if fmt == 'jpeg' else 'png'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, quality=90)
                if fmt == "jpeg":
                    with Image.open(path) as img:
                        pixels = np.asarray(img.convert("RGB"))
                images.append(pixels)
                labels.append(label)
        splits.append((images, labels))
    pickles = tmp_path / f"{name}-pickles-{fmt}-{eval_name}" / {"cifar10": "cifar-10-batches-py",
                                                               "cifar100": "cifar-100-python"}[name]
    _write_pickles(pickles, name, splits, classes)
    return pickles, tree


def _png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def _solid(path, size, value):
    w, h = size
    _png(path, np.full((h, w, 3), value, np.uint8))


def make_small_folder(root, size=(16, 16), eval_name="val", classes=("bee", "ant"), per_class=(4, 2), seed=3):
    """A ``folder`` tree of random PNGs of one small size."""
    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("train", per_class[0]), (eval_name, per_class[1])):
        for c in classes:
            for i in range(n):
                _png(root / split / c / f"{i}.png", rng.integers(0, 256, (h, w, 3)))
    return root


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _one_line(match, fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and all(str(m) in msg for m in (match if isinstance(match, tuple) else (match,))), msg
    return msg


# --------------------------------------------------------------------------- CIFAR as class folders


@pytest.mark.parametrize("fmt,eval_name", [("png", "test"), ("png", "val"), ("jpeg", "test"), ("jpeg", "val")])
def test_class_folder_tree_gives_the_pickle_tensors(tmp_path, fmt, eval_name):
    pickles, tree = make_cifar_pair(tmp_path, fmt=fmt, eval_name=eval_name)
    kw = dict(eval_batch_size=7, workers=0, seed=4)
    ptr, pva, pinfo = build_loaders("cifar10", str(pickles), 8, **kw)
    ttr, tva, tinfo = build_loaders("cifar10", str(tree), 8, **kw)
    # The same arrays in the same order: one fingerprint, and every batch equal, augmentation
    # (seeded by image index) included.
    assert isinstance(ttr.dataset.source, ArraySplit)
    assert np.array_equal(ttr.dataset.source.images, ptr.dataset.source.images)
    assert np.array_equal(ttr.dataset.source.labels, ptr.dataset.source.labels)
    assert tinfo.train_fingerprint == pinfo.train_fingerprint
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(_epoch(ttr, epoch), _epoch(ptr, epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(_epoch(tva), _epoch(pva), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert (tinfo.train_size, tinfo.val_size, tinfo.image_size, tinfo.mean) == (30, 10, 32, pinfo.mean)
    assert tinfo.class_names == pinfo.class_names == list(CIFAR10_CLASSES)
    label = "JPEG" if fmt == "jpeg" else "PNG"
    assert tinfo.layout == f"class folders train/ + {eval_name}/ ({label}), decoded into memory"
    assert pinfo.layout == "python pickles (cifar-10-batches-py)"


def test_cifar100_tree_gives_the_pickle_tensors(tmp_path):
    pickles, tree = make_cifar_pair(tmp_path, name="cifar100", per_class=(1, 1))
    ptr, pva, pinfo = build_loaders("cifar100", str(pickles.parent), 10, workers=0)   # the parent folder
    ttr, tva, tinfo = build_loaders("cifar100", str(tree), 10, workers=0)
    assert tinfo.class_names == pinfo.class_names == list(CIFAR100_CLASSES)
    assert tinfo.train_fingerprint == pinfo.train_fingerprint
    for (xa, ya), (xb, yb) in zip(_epoch(tva), _epoch(pva), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_torchvision_class_lists_are_sorted_so_folder_order_is_label_order(tmp_path):
    """torchvision's CIFAR ``classes`` (the archives' label names, CIFAR10_CLASSES /
    CIFAR100_CLASSES) are in sorted order: ImageFolder's sorted class folders get their indices."""
    for names, n in ((CIFAR10_CLASSES, 10), (CIFAR100_CLASSES, 100)):
        assert list(names) == sorted(names) and len(set(names)) == n
    _, tree = make_cifar_pair(tmp_path, per_class=(1, 1))
    ref = ImageFolder(str(tree / "train"))
    assert ref.classes == list(CIFAR10_CLASSES)
    _, _, info = build_loaders("cifar10", str(tree), 2, workers=0)
    assert info.class_names == ref.classes


def test_numbered_class_folders_are_label_indices(tmp_path):
    """Folders 0..99 (an export by label index) are read numerically: folder 10 is label 10, not
    the third class of a text sort; the classes keep CIFAR-100's names."""
    tree = tmp_path / "numbered"
    for label in range(100):
        _solid(tree / "train" / str(label) / "a.png", (32, 32), label)
        if label % 10 == 3:
            _solid(tree / "test" / str(label) / "b.png", (32, 32), label)
    tr, va, info = build_loaders("cifar100", str(tree), 10, workers=0)
    for split in (tr.dataset.source, va.dataset.source):
        assert np.array_equal(split.labels, split.images[:, 0, 0, 0])   # each image's value is its folder
    assert info.class_names == list(CIFAR100_CLASSES)
    assert "numbered class folders read as CIFAR-100 label indices" in info.layout


def test_own_class_names_are_indexed_in_sorted_order(tmp_path):
    tree = tmp_path / "own"
    names = [f"kind{k}" for k in range(10)]
    for value, name in enumerate(reversed(names)):   # created in reverse order on purpose
        _solid(tree / "train" / name / "a.png", (32, 32), value)
        _solid(tree / "train" / name / "b.png", (32, 32), value)
        _solid(tree / "test" / name / "c.png", (32, 32), value)
    tr, _, info = build_loaders("cifar10", str(tree), 4, workers=0)
    assert info.class_names == sorted(names)
    assert "own class names, indices in sorted order" in info.layout
    images, labels = tr.dataset.source.images, tr.dataset.source.labels
    assert [info.class_names[label] for label in labels] == [names[9 - v] for v in images[:, 0, 0, 0]]


def test_cifar_tree_problems_are_one_line(tmp_path):
    _, tree = make_cifar_pair(tmp_path, per_class=(2, 1))
    # an image of another size
    odd = tree / "train" / "cat" / "0001.png"
    _solid(odd, (33, 32), 1)
    _one_line((odd, "33x32 px, not 32x32", "--dataset folder"), build_loaders, "cifar10", str(tree), 2, workers=0)
    _solid(odd, (32, 32), 1)
    # an unreadable file: named, or skipped and counted with skip_corrupt
    bad = tree / "train" / "dog" / "0000.png"
    bad.write_bytes(b"not a png")
    msg = _one_line(bad, build_loaders, "cifar10", str(tree), 2, workers=0)
    assert msg.startswith(f"corrupt image file {bad} (PIL: ") and "--skip-corrupt" in msg
    tr, _, info = build_loaders("cifar10", str(tree), 2, workers=0, skip_corrupt=True)
    assert info.train_size == 19 and len(tr.skipped) == 1 and str(bad) in tr.skipped
    bad.unlink()
    # another number of classes
    import shutil
    shutil.rmtree(tree / "train" / "truck")
    _one_line((tree / "train", "9 class folders, CIFAR-10 has 10", "--dataset folder"),
              build_loaders, "cifar10", str(tree), 2, workers=0)
    # neither layout
    _one_line((tmp_path, "cifar-100-python/train", "train/ and test/"), build_loaders, "cifar100", str(tmp_path), 2,
              workers=0)


def test_truncated_files_are_named_when_decoded(tmp_path):
    """Decoding reads each file whole: a JPEG cut before its end marker, or a PNG before its IEND
    chunk, is named in one line (before any training), like the file path's header check does."""
    _, tree = make_cifar_pair(tmp_path, fmt="jpeg", per_class=(1, 1))
    cut = tree / "train" / "bird" / "0000.jpg"
    cut.write_bytes(cut.read_bytes()[:-2])   # only the end-of-image marker cut off
    msg = _one_line(cut, build_loaders, "cifar10", str(tree), 2, workers=0)
    assert "truncated JPEG" in msg
    root = make_small_folder(tmp_path / "small")
    png = root / "val" / "ant" / "1.png"
    png.write_bytes(png.read_bytes()[:-12])   # the IEND chunk cut off
    assert "truncated PNG" in _one_line(png, build_loaders, "folder", str(root), 2, workers=0)
    _, va, info = build_loaders("folder", str(root), 2, workers=0, skip_corrupt=True)
    assert info.val_size == 3 and list(va.skipped.files) == [str(png)]


def test_the_process_pool_decodes_like_one_process(tmp_path, monkeypatch):
    """Chunks of 4 files over 2 processes (the pool's thresholds lowered for tiny data): the same
    arrays in the same order, the same one-line errors, and a large image still stops decoding."""
    from adautomix_fast.data import decode

    _, tree = make_cifar_pair(tmp_path, per_class=(3, 1))
    serial = build_loaders("cifar10", str(tree), 2, workers=0)[0].dataset.source
    monkeypatch.setattr(decode, "CHUNK", 4)
    monkeypatch.setattr(decode, "POOL_MIN_FILES", 8)
    pooled = build_loaders("cifar10", str(tree), 2, workers=2)[0].dataset.source
    assert np.array_equal(pooled.images, serial.images) and np.array_equal(pooled.labels, serial.labels)
    bad = tree / "train" / "ship" / "0002.png"
    bad.write_bytes(b"not a png")
    _one_line((bad, "corrupt image file"), build_loaders, "cifar10", str(tree), 2, workers=2)
    root = make_small_folder(tmp_path / "small", per_class=(12, 2))
    _solid(root / "train" / "bee" / "9x.png", (80, 80), 1)   # in the last chunk of the training files
    import adautomix_fast.data as data
    monkeypatch.setattr(data, "first_look_small", lambda samples: True)   # as if the first look missed it
    assert build_loaders("folder", str(root), 2, workers=2)[2].image_size == 224


def test_cifar_tree_evaluation_split_must_be_one(tmp_path):
    _, tree = make_cifar_pair(tmp_path, per_class=(1, 1))
    os.rename(tree / "test", tree / "val")
    (tree / "test" / "cat").mkdir(parents=True)
    _one_line((tree, "several evaluation splits (val/ and test/)"), build_loaders, "cifar10", str(tree), 2, workers=0)
    os.rmdir(tree / "test" / "cat")
    os.rmdir(tree / "test")
    _, va, info = build_loaders("cifar10", str(tree), 2, workers=0)
    assert info.val_size == 10 and "train/ + val/" in info.layout
    import shutil
    shutil.rmtree(tree / "val")
    _one_line((tree / "val", "no evaluation split", "test/"), build_loaders, "cifar10", str(tree), 2, workers=0)


# --------------------------------------------------------------------------- evaluation split names


@pytest.mark.parametrize("dataset", ["folder", "imagenet"])
@pytest.mark.parametrize("eval_name", ["val", "valid", "validation", "test"])
def test_eval_split_names(tmp_path, dataset, eval_name):
    root = make_small_folder(tmp_path / "d", eval_name=eval_name)
    _, va, info = build_loaders(dataset, str(root), 2, workers=0, image_size=16)
    assert info.val_size == 4 and f"train/ + {eval_name}/" in info.layout
    assert torch.cat([y for _, y in va]).tolist() == [0, 0, 1, 1]   # ant, bee: sorted class folders


def test_several_or_no_eval_splits_are_one_line(tmp_path):
    root = make_small_folder(tmp_path / "d", eval_name="valid")
    make_small_folder(root, eval_name="test", per_class=(4, 1))
    _one_line((root, "several evaluation splits (valid/ and test/)"), build_loaders, "folder", str(root), 2, workers=0)
    import shutil
    shutil.rmtree(root / "valid")
    shutil.rmtree(root / "test")
    _one_line((root / "val", "no evaluation split", "valid/, validation/ or test/"), build_loaders, "imagenet",
              str(root), 2, workers=0)


def test_an_unlabelled_test_folder_beside_val_is_passed_over(tmp_path):
    """ImageNet's test/ holds images without class folders: not an evaluation split."""
    root = make_small_folder(tmp_path / "d")
    _solid(root / "test" / "ILSVRC2012_test_00000001.JPEG", (16, 16), 5)
    _, _, info = build_loaders("imagenet", str(root), 2, workers=0)
    assert info.val_size == 4 and "train/ + val/" in info.layout


# --------------------------------------------------------------------------- folder of small images


def _op_names(loader):
    return [type(t).__name__ for t in loader.dataset.transform.transforms]


def test_a_folder_of_small_images_trains_at_their_size_with_the_small_image_recipe(tmp_path):
    root = make_small_folder(tmp_path / "d", size=(24, 24))
    tr, va, info = build_loaders("folder", str(root), 4, eval_batch_size=4, workers=0)
    assert info.image_size == 24 and isinstance(tr.dataset.source, ArraySplit)
    assert tr.dataset.source.images.shape == (8, 24, 24, 3)
    ops = _op_names(tr)
    assert "RandomCrop" in ops and "RandomHorizontalFlip" in ops and "RandomResizedCrop" not in ops
    assert tr.dataset.transform.transforms[ops.index("RandomCrop")].padding == [3, 3, 3, 3]   # 24 // 8
    assert info.layout.startswith("class folders train/ + val/ (PNG), small images (24x24 px) decoded into memory")
    assert "trained at 24 px with the small-image recipe (pad crop + flip)" in info.layout
    x, _ = next(iter(va))   # evaluation: the pixels as they are, normalised with ImageNet statistics
    raw = torch.from_numpy(va.dataset.source.images[:4]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    torch.testing.assert_close(x, (raw - mean) / std, rtol=0, atol=1e-6)
    tr.set_epoch(0)
    assert next(iter(tr))[0].shape == (4, 3, 24, 24)
    # --img-size and --train-crop still decide
    tr, _, info = build_loaders("folder", str(root), 4, workers=0, image_size=40)
    assert info.image_size == 40 and "Resize" in _op_names(tr) and "trained at 40 px" in info.layout
    from adautomix_fast.data import AugmentRecipe
    tr, _, info = build_loaders("folder", str(root), 4, workers=0, recipe=AugmentRecipe(train_crop="rrc"))
    assert info.image_size == 24 and "RandomResizedCrop" in _op_names(tr) and "--train-crop rrc" in info.layout


def test_small_images_of_several_sizes_train_at_the_most_common_size(tmp_path):
    root = make_small_folder(tmp_path / "d", size=(20, 20))
    wide = np.zeros((16, 24, 3), np.uint8)
    wide[:, 12:] = 200   # left half dark, right half bright: the centre crop keeps both
    _png(root / "train" / "ant" / "wide.png", wide)
    tr, _, info = build_loaders("folder", str(root), 4, workers=0)
    assert info.image_size == 20 and tr.dataset.source.images.shape == (9, 20, 20, 3)
    assert "small images (20x20 px; 1 of other sizes resized to it)" in info.layout
    # shorter side to 20 (30x20), then the centre 20x20: columns 5..24 of the 30, dark then bright
    resized = tr.dataset.source.images[list(tr.dataset.source.labels).index(0) + 4]
    assert resized[10, 0, 0] < 20 and resized[10, -1, 0] > 180


def test_one_large_image_keeps_the_imagenet_recipe(tmp_path):
    root = make_small_folder(tmp_path / "d")
    _solid(root / "val" / "bee" / "large.png", (80, 70), 9)
    tr, _, info = build_loaders("folder", str(root), 4, workers=0)
    assert info.image_size == 224 and isinstance(tr.dataset.source, FolderSplit)
    assert "RandomResizedCrop" in _op_names(tr) and "small" not in info.layout


def test_cli_trains_one_epoch_on_a_small_folder_at_its_size(tmp_path, capsys):
    root = make_small_folder(tmp_path / "d", size=(16, 16), per_class=(6, 2))
    code, out, err = run_cli(["--dataset", "folder", "--data-dir", str(root), "--arch", "tiny", "-j", "0",
                              "--vis-every", "0", "--impl", "reference", "--epochs", "1", "--batch-size", "4",
                              "--output", str(tmp_path / "runs"), "--run-name", "r"], capsys)
    assert code == 0, err
    assert "(12 train / 4 val images, 2 classes, 16px, CIFAR stem, class folders" in out



def test_a_small_folder_gives_methods_its_image_size_in_training_and_in_evaluation(tmp_path, capsys):
    """PuzzleMix's grids follow the image side: a folder of 32-px images gets the CIFAR grids
    (2-16, 4-px transport cells), not the 224-px ones, in the run, its summary and the model
    `evaluate` rebuilds from the checkpoint."""
    pytest.importorskip("gco")
    from adautomix_fast.evaluate.context import load_run

    root = make_small_folder(tmp_path / "d", size=(32, 32), per_class=(4, 2))
    code, out, err = run_cli(["--dataset", "folder", "--data-dir", str(root), "--arch", "tiny", "-j", "0",
                              "--method", "puzzlemix", "--vis-every", "0", "--impl", "reference", "--epochs", "1",
                              "--batch-size", "4", "--output", str(tmp_path / "runs"), "--run-name", "r"], capsys)
    assert code == 0, err
    assert "32px" in out and "grids 2-16, transport" in out and "4 px cells" in out
    ckpt = torch.load(tmp_path / "runs" / "r" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["image_size"] == 32
    model = load_run(str(tmp_path / "runs" / "r")).model
    assert (model.block_num, model.t_size) == (5, 4)

# --------------------------------------------------------------------------- --train-subset


def test_quotas_are_floor_plus_remainder_to_the_first_classes():
    assert quotas(10, [5, 5, 5]) == [4, 3, 3]
    assert quotas(9, [5, 5, 5]) == [3, 3, 3]
    assert quotas(10, [1, 9, 9]) == [1, 5, 4]   # a small class gives what it has, the others share the rest
    assert quotas(6, [2, 2, 2]) == [2, 2, 2]


def test_subset_is_class_balanced_fixed_and_nested():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [30, 25, 40, 5])
    rng.shuffle(labels)
    chosen = balanced_subset(labels, 22, "cifar10", "x")
    assert np.all(np.diff(chosen) > 0)
    assert np.bincount(labels[chosen], minlength=4).tolist() == [6, 6, 5, 5]
    assert np.array_equal(chosen, balanced_subset(labels, 22, "cifar10", "x"))            # fixed
    assert not np.array_equal(chosen, balanced_subset(labels, 22, "cifar100", "x"))       # keyed by data set
    assert set(balanced_subset(labels, 10, "cifar10", "x")) <= set(chosen)                # nested
    small = balanced_subset(labels, 30, "cifar10", "x")
    assert np.bincount(labels[small], minlength=4).tolist() == [9, 8, 8, 5]               # class 3 has 5


def test_subset_through_the_loaders_is_recorded_and_independent_of_the_seed(tmp_path):
    pickles, tree = make_cifar_pair(tmp_path, per_class=(4, 1))
    full = build_loaders("cifar10", str(pickles), 4, workers=0)[2]
    infos = [build_loaders("cifar10", str(root), 4, workers=0, seed=seed, train_subset=23)
             for root, seed in ((pickles, 0), (pickles, 7), (tree, 3))]
    (tr, va, info) = infos[0]
    assert (info.train_size, info.train_subset, info.full_train_size, info.val_size) == (23, 23, 40, 10)
    assert np.bincount(tr.dataset.source.labels).tolist() == [3, 3, 3] + [2] * 7
    # the same images whatever the seed, and from either layout of the same data
    assert len({i.train_fingerprint for _, _, i in infos}) == 1 and info.train_fingerprint != full.train_fingerprint
    assert all(np.array_equal(t.dataset.source.images, tr.dataset.source.images) for t, _, _ in infos)
    assert info.describe() == "python pickles (cifar-10-batches-py), class-balanced subset of 23 of 40 training images"
    assert full.describe() == "python pickles (cifar-10-batches-py)" and full.train_subset is None
    # image files (no decoding): the subset's file list
    root = tmp_path / "large"
    for c in ("a", "b", "c"):
        for i in range(5):
            _solid(root / "train" / c / f"{i}.png", (70, 70), i)
        _solid(root / "val" / c / "v.png", (70, 70), 1)
    tr, va, info = build_loaders("folder", str(root), 2, workers=0, image_size=16, train_subset=7)
    assert isinstance(tr.dataset.source, FolderSplit) and info.train_size == 7 and info.val_size == 3
    assert [os.path.basename(os.path.dirname(p)) for p, _ in tr.dataset.source.samples] == list("aaabbcc")


@pytest.mark.parametrize("n,message", [(41, "--train-subset 41 is larger than the 40 training images"),
                                       (9, "--train-subset 9 is smaller than the 10 classes")])
def test_subset_out_of_range_is_one_line(tmp_path, n, message):
    pickles, _ = make_cifar_pair(tmp_path, per_class=(4, 1))
    _one_line((message, str(pickles)), build_loaders, "cifar10", str(pickles), 2, workers=0, train_subset=n)


def test_subset_is_a_config_identity_setting():
    assert "train_subset" in Config.identity_fields()
    assert resolve({"train_subset": 100}).train_subset == 100
    assert resolve({"train_subset": 100}).fingerprint() != resolve({}).fingerprint()
    with pytest.raises(UsageError, match="--train-subset must be at least 2"):
        resolve({"train_subset": 0})


def test_cli_subset_is_recorded_and_the_same_for_every_seed_and_method(tmp_path, capsys):
    pickles, _ = make_cifar_pair(tmp_path, per_class=(4, 1))
    runs = tmp_path / "runs"
    prints = set()
    for method, seed in (("vanilla", 0), ("mixup", 5)):
        code, _, err = run_cli(["--dataset", "cifar10", "--data-dir", str(pickles), "--arch", "tiny", "-j", "0",
                                "--vis-every", "0", "--impl", "reference", "--epochs", "1", "--batch-size", "10",
                                "--img-size", "16", "--method", method, "--seed", str(seed), "--train-subset", "20",
                                "--output", str(runs), "--run-name", method], capsys)
        assert code == 0, err
        state = torch.load(runs / method / "checkpoint-last.pt", weights_only=True)
        assert state["train_size"] == 20 and state["config"]["train_subset"] == 20
        assert yaml.safe_load(open(runs / method / "config.yaml"))["train_subset"] == 20
        prints.add(state["train_fingerprint"])
    expected = build_loaders("cifar10", str(pickles), 10, workers=0, train_subset=20)[2].train_fingerprint
    assert prints == {expected}


def test_cli_subset_larger_than_the_data_is_one_line_and_writes_nothing(tmp_path, capsys):
    pickles, _ = make_cifar_pair(tmp_path, per_class=(4, 1))
    code, _, err = run_cli(["--dataset", "cifar10", "--data-dir", str(pickles), "--arch", "tiny", "-j", "0",
                            "--epochs", "1", "--train-subset", "41", "--output", str(tmp_path / "runs")], capsys)
    assert code == 2 and "--train-subset 41 is larger than the 40 training images" in single_error_line(err)
    assert not (tmp_path / "runs").exists()
