"""Tests of adautomix_fast.data on tiny files in the real on-disk formats (CPU, a few seconds)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from adautomix_fast.data import DATA_ENV, DATASETS, build_loaders, resolve_data_dir
from adautomix_fast.data.sampling import TrainBatchSampler, sample_seed
from adautomix_fast.data.transforms import CIFAR10_MEAN, CIFAR10_STD, build_transforms
from adautomix_fast.errors import DataError

# --------------------------------------------------------------------------- fixtures: real formats


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10(tmp_path):
    """cifar-10-batches-py with 5 x 8 training rows and 13 test rows (bytes keys, like the originals)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _pickle(root / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, 8).tolist(),
            b"filenames": [b"x.png"] * 8,
        })
    _pickle(root / "test_batch", {
        b"data": rng.integers(0, 256, (13, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, 13).tolist(),
    })
    _pickle(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    return root


@pytest.fixture
def cifar100(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for split, n in (("train", 30), ("test", 11)):
        _pickle(root / split, {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": rng.integers(0, 100, n).tolist(),
            b"coarse_labels": rng.integers(0, 20, n).tolist(),
        })
    _pickle(root / "meta", {
        b"fine_label_names": [f"f{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"g{i}".encode() for i in range(20)],
    })
    return root


def _jpeg(path, rng, size=None, sides=(30, 60)):
    w, h = size or (int(rng.integers(*sides)), int(rng.integers(*sides)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=80)


@pytest.fixture
def folder(tmp_path):
    """ImageFolder tree: train 3 classes x 5 JPEGs, val 3 classes x (3, 2, 2) JPEGs; random sizes
    above 64 px (smaller images would be decoded into memory: test_cifar_folders.py)."""
    rng = np.random.default_rng(2)
    root = tmp_path / "folder"
    for c in ("cat", "ant", "bee"):  # not created in sorted order on purpose
        for i in range(5):
            _jpeg(root / "train" / c / f"{i}.jpg", rng, sides=(65, 100))
    for c, n in (("ant", 3), ("bee", 2), ("cat", 2)):
        for i in range(n):
            _jpeg(root / "val" / c / f"v{i}.JPEG", rng, sides=(65, 100))
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored like ImageFolder does")
    return root


@pytest.fixture
def tiny_raw(tmp_path):
    """Raw tiny-imagenet-200 layout: train/<wnid>/images/*.JPEG, val/images + val_annotations.txt."""
    rng = np.random.default_rng(3)
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    for w in wnids:
        for i in range(4):
            _jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG", rng, (64, 64))
        (root / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t10\t10\n")
    lines = []
    for i, w in enumerate(["n03", "n01", "n02", "n01", "n03"]):
        _jpeg(root / "val" / "images" / f"val_{i}.JPEG", rng, (64, 64))
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return root


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _keys(loader):
    return [i for batch in loader.batch_sampler for i, _ in batch]


# --------------------------------------------------------------------------- array data sets


def test_digits_loads_with_fixed_split():
    tr, va, info = build_loaders("digits", None, 100, workers=0, seed=0)
    assert info.num_classes == 10 and info.image_size == 32
    assert info.train_size + info.val_size == 1797 and info.val_size == 360
    src = tr.dataset.source
    assert src.images.shape[1:] == (32, 32, 3) and src.images.dtype == np.uint8
    assert np.array_equal(src.images[..., 0], src.images[..., 2])  # gray replicated
    assert len(tr) == 1437 // 100
    x, y = next(iter(va))
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # The split does not depend on the run seed.
    _, va1, _ = build_loaders("digits", None, 100, workers=0, seed=123)
    assert np.array_equal(va.dataset.source.labels, va1.dataset.source.labels)
    assert np.array_equal(va.dataset.source.images, va1.dataset.source.images)


def test_cifar10_batches_and_normalisation(cifar10):
    tr, va, info = build_loaders("cifar10", str(cifar10), 16, eval_batch_size=5, workers=0)
    assert (info.num_classes, info.train_size, info.val_size) == (10, 40, 13)
    assert info.class_names[:2] == ["c0", "c1"]
    x, y = next(iter(tr))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Eval applies no augmentation: exactly (pixel/255 - mean) / std of the CHW-reshaped row.
    with open(cifar10 / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    xv, yv = next(iter(va))
    first = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float() / 255
    expect = (first - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None]
    torch.testing.assert_close(xv[0], expect)
    assert yv.tolist() == raw[b"labels"][:5]


def test_cifar_accepts_parent_folder(cifar10, cifar100):
    *_, a = build_loaders("cifar10", str(cifar10.parent), 8, workers=0)
    *_, b = build_loaders("cifar10", str(cifar10), 8, workers=0)
    assert a == b
    _, va, info = build_loaders("cifar100", str(cifar100.parent), 10, eval_batch_size=4, workers=0)
    assert info.num_classes == 100 and (info.train_size, info.val_size) == (30, 11)
    with open(cifar100 / "test", "rb") as f:
        fine = pickle.load(f, encoding="bytes")[b"fine_labels"]
    assert torch.cat([y for _, y in va]).tolist() == fine


# --------------------------------------------------------------------------- folders


def test_folder_labels_match_imagefolder(folder):
    tr, va, info = build_loaders("folder", str(folder), 4, eval_batch_size=3, workers=0, image_size=32)
    ref = ImageFolder(str(folder / "train"))
    assert info.class_names == ref.classes == ["ant", "bee", "cat"]
    assert tr.dataset.source.samples == ref.samples  # same files, same order, same targets
    # val folders map to the train indices; loader yields them in order.
    ref_val = [(p, ref.class_to_idx[os.path.basename(os.path.dirname(p))])
               for p, _ in ImageFolder(str(folder / "val")).samples]
    assert va.dataset.source.samples == ref_val
    assert torch.cat([y for _, y in va]).tolist() == [t for _, t in ref_val]
    x, y = next(iter(tr))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_folder_default_size_224(folder):
    tr, va, info = build_loaders("folder", str(folder), 2, eval_batch_size=7, workers=0)
    assert info.image_size == 224
    assert next(iter(tr))[0].shape == (2, 3, 224, 224)
    assert next(iter(va))[0].shape == (7, 3, 224, 224)
    resize = build_transforms("imagenet")[1].transforms[0]
    assert list(resize.size) == [256]  # shorter side 224 / 0.875


def test_tiny_imagenet_raw_layout(tiny_raw):
    for path in (tiny_raw, tiny_raw.parent):  # the extracted folder or its parent
        tr, va, info = build_loaders("tiny-imagenet", str(path), 4, workers=0)
        ref = ImageFolder(str(tiny_raw / "train"))
        assert info.class_names == ref.classes == ["n01", "n02", "n03"] and info.image_size == 64
        assert tr.dataset.source.samples == ref.samples
        labels = torch.cat([y for _, y in va]).tolist()
        assert labels == [ref.class_to_idx[w] for w in ["n03", "n01", "n02", "n01", "n03"]]
        assert next(iter(va))[0].shape == (4, 3, 64, 64)


# --------------------------------------------------------------------------- sampling


def test_train_drops_last_incomplete_batch(cifar10):
    tr, _, _ = build_loaders("cifar10", str(cifar10), 16, workers=0)
    assert len(tr) == 40 // 16 == 2
    batches = _batches(tr)
    assert len(batches) == 2 and all(len(y) == 16 for _, y in batches)


def test_eval_counts_each_image_once(cifar10):
    _, va, _ = build_loaders("cifar10", str(cifar10), 8, eval_batch_size=5, workers=0)
    assert len(va) == 3 and [len(y) for _, y in va] == [5, 5, 3]
    assert _keys(va) == list(range(13))
    shards = [build_loaders("cifar10", str(cifar10), 8, eval_batch_size=5, workers=0, rank=r, world_size=2)[1]
              for r in range(2)]
    k0, k1 = _keys(shards[0]), _keys(shards[1])
    assert not set(k0) & set(k1) and sorted(k0 + k1) == list(range(13))
    assert sum(len(y) for s in shards for _, y in s) == 13


def test_train_shards_partition_epoch(cifar10):
    keys = []
    for r in range(2):
        tr, _, _ = build_loaders("cifar10", str(cifar10), 4, workers=0, seed=7, rank=r, world_size=2)
        tr.set_epoch(3)
        assert len(tr) == 5
        keys.append(_keys(tr))
    assert not set(keys[0]) & set(keys[1]) and sorted(keys[0] + keys[1]) == list(range(40))
    # Strided shards with an odd-size set: equal batch counts, disjoint, one item left out.
    s = [TrainBatchSampler(41, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    a, b = s[0].shard_indices(), s[1].shard_indices()
    assert len(a) == len(b) == 20 and not set(a) & set(b) and len(s[0]) == len(s[1]) == 5


def test_same_seed_same_batches_and_epochs_differ(cifar10):
    runs = []
    for _ in range(2):
        tr, _, _ = build_loaders("cifar10", str(cifar10), 8, workers=0, seed=5)
        tr.set_epoch(2)
        runs.append(_batches(tr))
    for (xa, ya), (xb, yb) in zip(*runs):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order2 = [i for batch in _epoch_keys(tr, 2) for i in batch]
    order3 = [i for batch in _epoch_keys(tr, 3) for i in batch]
    assert order2 != order3 and sorted(order2) == sorted(order3)
    tr.set_epoch(3)
    assert not torch.equal(runs[0][0][0], _batches(tr)[0][0])
    # A different run seed gives a different order too.
    assert _epoch_keys(tr, 2) != _epoch_keys(build_loaders("cifar10", str(cifar10), 8, workers=0, seed=6)[0], 2)


def _epoch_keys(loader, epoch):
    loader.set_epoch(epoch)
    return [[i for i, _ in batch] for batch in loader.batch_sampler]


def test_augmentation_is_per_sample_not_per_position(cifar10):
    """The same image gets the same crop/flip in an epoch whatever the sharding (keyed by index)."""
    assert sample_seed(0, 1, 5) == sample_seed(0, 1, 5) != sample_seed(0, 2, 5) != sample_seed(1, 1, 5)
    full, _, _ = build_loaders("cifar10", str(cifar10), 40, workers=0, seed=1)
    half, _, _ = build_loaders("cifar10", str(cifar10), 20, workers=0, seed=1, rank=1, world_size=2)
    full.set_epoch(0), half.set_epoch(0)
    xf = next(iter(full))[0]
    pos = {i: j for j, i in enumerate(_keys(full))}
    xh = next(iter(half))[0]
    for j, i in enumerate(_keys(half)):
        assert torch.equal(xh[j], xf[pos[i]])


def test_global_rng_untouched(cifar10):
    tr, va, _ = build_loaders("cifar10", str(cifar10), 8, workers=0)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    tr.set_epoch(1)
    _batches(tr), _batches(va)
    assert torch.equal(state, torch.get_rng_state())


def test_workers_0_and_2_identical(folder):
    kw = dict(eval_batch_size=4, seed=3, image_size=32)
    tr0, va0, _ = build_loaders("folder", str(folder), 4, workers=0, **kw)
    tr2, va2, _ = build_loaders("folder", str(folder), 4, workers=2, **kw)
    for epoch in (0, 1):
        tr0.set_epoch(epoch), tr2.set_epoch(epoch)
        a, b = _batches(tr0), _batches(tr2)
        assert len(a) == len(b) == 3
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(_batches(va0), _batches(va2)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --------------------------------------------------------------------------- errors


def _raises(match_path, fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert str(match_path) in msg and "\n" not in msg, msg
    return msg


def test_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    _raises(tmp_path / "nope", build_loaders, "imagenet", str(tmp_path / "nope"), 4, workers=0)
    msg = _raises("--data-dir", resolve_data_dir, "imagenet", None)
    assert msg == ("imagenet needs its files: pass --data-dir /path/to/imagenet (a folder with train/ and val/) "
                   "or set ADAUTOMIX_DATA=/path/to/datasets")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    _raises(tmp_path / "cifar10", resolve_data_dir, "cifar10", None)
    (tmp_path / "cifar10").mkdir()
    assert resolve_data_dir("cifar10", None) == str(tmp_path / "cifar10")
    assert resolve_data_dir("digits", None) is None
    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "tiny-imagenet", "imagenet", "folder",
                             "cub200", "aircraft", "cars"}


def test_cifar_missing_or_corrupt_files(cifar10, tmp_path):
    _raises(tmp_path, build_loaders, "cifar100", str(tmp_path), 4, workers=0)
    (cifar10 / "data_batch_3").write_bytes(b"not a pickle")
    _raises(cifar10 / "data_batch_3", build_loaders, "cifar10", str(cifar10), 4, workers=0)
    os.remove(cifar10 / "test_batch")
    (cifar10 / "data_batch_3").unlink()
    _raises(cifar10 / "data_batch_3", build_loaders, "cifar10", str(cifar10), 4, workers=0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split_folder(folder, split):
    import shutil

    shutil.rmtree(folder / split)
    _raises(folder / split, build_loaders, "folder", str(folder), 2, workers=0)


def test_empty_data_folder(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "val").mkdir()
    msg = _raises(tmp_path / "d" / "train", build_loaders, "imagenet", str(tmp_path / "d"), 2, workers=0)
    assert msg.startswith("empty data folder")
    (tmp_path / "d" / "train" / "a").mkdir()  # class folders, but no images anywhere
    (tmp_path / "d" / "train" / "b").mkdir()
    msg = _raises(tmp_path / "d" / "train", build_loaders, "imagenet", str(tmp_path / "d"), 2, workers=0)
    assert msg.startswith("empty data folder")


def test_flat_val_folder_is_explained(folder):
    """ImageNet's raw val/ (images, no class folders) gets a message that says to sort them."""
    import shutil

    shutil.rmtree(folder / "val")
    _jpeg(folder / "val" / "ILSVRC2012_val_00000001.JPEG", np.random.default_rng(0))
    msg = _raises(folder / "val", build_loaders, "imagenet", str(folder), 2, workers=0)
    assert "no class folders" in msg


def test_empty_class_folder(folder):
    (folder / "train" / "dog").mkdir()
    msg = _raises(folder / "train" / "dog", build_loaders, "folder", str(folder), 2, workers=0)
    assert "remove" in msg


def test_val_class_not_in_train(folder):
    _jpeg(folder / "val" / "zebra" / "z.jpg", np.random.default_rng(0))
    _raises(folder / "val" / "zebra", build_loaders, "folder", str(folder), 2, workers=0)


def test_batch_size_larger_than_train_set(folder):
    msg = _raises("--batch-size 16", build_loaders, "folder", str(folder), 16, workers=0)
    assert "15 training images" in msg and str(folder) in msg
    msg = _raises("--batch-size 8", build_loaders, "folder", str(folder), 8, workers=0, rank=1, world_size=2)
    assert "7 training images" in msg


@pytest.mark.parametrize("workers,damage", [(0, "garbage"), (0, "truncated"), (2, "garbage")])
def test_corrupt_image_reaches_main_process_as_data_error(folder, workers, damage):
    bad = folder / "train" / "bee" / "2.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg" if damage == "garbage" else data[: len(data) // 2])
    tr, _, _ = build_loaders("folder", str(folder), 15, workers=workers, image_size=32)  # one batch: all images
    tr.set_epoch(0)
    msg = _raises(bad, list, tr)
    assert msg.startswith(f"corrupt image file {bad} (PIL: ") and msg.endswith("; remove or replace it")


def test_digits_are_not_flipped():
    """A mirrored digit is another glyph: digits train with crops only; CIFAR also flips."""
    names = lambda d: [type(t).__name__ for t in build_transforms(d)[0].transforms]
    assert "RandomHorizontalFlip" not in names("digits") and "RandomCrop" in names("digits")
    assert "RandomHorizontalFlip" in names("cifar100")


# --------------------------------------------------------------------------- resuming mid-epoch


class _CountingSource:
    """Wraps a split: records every dataset index loaded (workers=0: in this process)."""

    def __init__(self, source):
        self.source, self.loaded = source, []

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.loaded.append(index)
        return self.source[index]


@pytest.mark.parametrize("rank,world_size", [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("dataset", ["cifar10", "folder"])
def test_resume_mid_epoch_yields_the_rest_of_the_epoch(cifar10, folder, dataset, rank, world_size):
    """set_epoch(e, start_batch=k): bitwise batches k.. of the whole epoch, labels included; the
    first k batches are never loaded; len() is unchanged and remaining() counts what is left."""
    root, bs = (cifar10, 6) if dataset == "cifar10" else (folder, 2)
    tr, _, _ = build_loaders(dataset, str(root), bs, workers=0, seed=11, image_size=24, rank=rank,
                             world_size=world_size)
    n = len(tr)
    assert n >= 3
    tr.set_epoch(4)
    assert tr.start_batch == 0 and tr.remaining() == n
    whole = _batches(tr)
    keys = [[i for i, _ in b] for b in tr.batch_sampler]
    assert len(whole) == n
    counting = tr.dataset.source = _CountingSource(tr.dataset.source)
    for k in range(n + 1):
        counting.loaded.clear()
        tr.set_epoch(4, start_batch=k)
        assert len(tr) == n and tr.remaining() == n - k and tr.start_batch == k
        rest = _batches(tr)
        assert len(rest) == n - k
        for (xa, ya), (xb, yb) in zip(rest, whole[k:]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert counting.loaded == [i for b in keys[k:] for i in b]  # nothing of batches 0..k-1
    # The start holds for every pass until the next set_epoch; set_epoch(e) starts at 0 again.
    tr.set_epoch(4, start_batch=n - 1)
    assert len(_batches(tr)) == len(_batches(tr)) == 1
    tr.set_epoch(4)
    assert tr.remaining() == n and all(torch.equal(a[0], b[0]) for a, b in zip(_batches(tr), whole))


def test_resume_with_workers_matches(folder):
    """Worker processes (persistent across passes) get only the remaining batches' keys too."""
    tr, _, _ = build_loaders("folder", str(folder), 2, workers=2, seed=3, image_size=24, rank=1, world_size=2)
    tr.set_epoch(1)
    whole = _batches(tr)
    tr.set_epoch(1, start_batch=1)
    rest = _batches(tr)
    tr.set_epoch(1)
    again = _batches(tr)
    assert len(tr) == 3 and len(rest) == 2 and len(again) == 3
    for (xa, ya), (xb, yb) in zip(rest + again, whole[1:] + whole):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_bad_start_batch_raises_and_val_ignores_it(cifar10):
    tr, va, _ = build_loaders("cifar10", str(cifar10), 8, eval_batch_size=5, workers=0)
    assert len(tr) == 5
    tr.set_epoch(2, start_batch=3)
    for bad in (-1, 6, 100):
        with pytest.raises(ValueError, match="start_batch"):
            tr.set_epoch(7, start_batch=bad)
    assert (tr.batch_sampler.epoch, tr.start_batch) == (2, 3)  # a refused call changes nothing
    with pytest.raises(TypeError):
        tr.set_epoch(2, start_batch=1.5)
    tr.set_epoch(2, start_batch=np.int64(5))  # == len(): an empty pass
    assert tr.remaining() == 0 and _batches(tr) == []
    va.set_epoch(2, start_batch=2)  # accepted for symmetry, ignored: evaluation runs whole
    assert [len(y) for _, y in va] == [5, 5, 3] and va.remaining() == len(va) == 3
    s = TrainBatchSampler(41, 4, seed=0, rank=1, world_size=2)
    s.set_epoch(0, start_batch=4)
    assert len(s) == 5 and s.remaining() == 1 and len(list(s)) == 1
