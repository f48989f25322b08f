"""The DALI data backend (CPU-only DALI here: ``device_id=None``, CPU operators) against the torch one.

Every test but the first two needs DALI (``pip install nvidia-dali-cuda130``) and is skipped
cleanly without it.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from adautomix_fast.data import INSTALL_HINT, build_loaders, dali as dali_mod, resolve_backend
from adautomix_fast.data.transforms import CIFAR10_MEAN, CIFAR10_STD, DIGITS_MEAN, DIGITS_STD, IMAGENET_STD
from adautomix_fast.errors import DataError, UsageError

HAVE_DALI = dali_mod.dali_import_error() is None
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason=f"NVIDIA DALI does not import ({INSTALL_HINT})")

# JPEG-decoder tolerance: the two backends decode with different libjpeg-turbo builds and round
# the resize differently; measured at most 1 uint8 level apart. In normalised units:
LEVEL = 1 / 255 / min(IMAGENET_STD)


# --------------------------------------------------------------------------- fixtures


def _jpeg(path, rng, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=85)


@pytest.fixture
def folder(tmp_path):
    """ImageFolder tree of noise JPEGs of random sizes: train 3 classes x 4, val 3 x (3, 2, 2).
    Two are larger than 64 px (67x63, 68x62), so the tree stays files for DALI's reader."""
    rng = np.random.default_rng(2)
    root = tmp_path / "folder"
    for c in ("cat", "ant", "bee"):  # not created in sorted order on purpose
        for i in range(4):
            _jpeg(root / "train" / c / f"{i}.jpg", rng, (int(rng.integers(30, 70)), int(rng.integers(30, 70))))
    for c, n in (("ant", 3), ("bee", 2), ("cat", 2)):
        for i in range(n):
            _jpeg(root / "val" / c / f"v{i}.JPEG", rng, (int(rng.integers(30, 70)), int(rng.integers(30, 70))))
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored like ImageFolder does")
    return root


@pytest.fixture
def ids(tmp_path):
    """Lossless solid-colour PNGs whose red value identifies the image: train 12 (2 classes), val 7.
    Larger than 64 px, so that they stay files (DALI's file reader) and are not decoded into memory."""
    root = tmp_path / "ids"
    value = 10
    for split, counts in (("train", (5, 7)), ("val", (4, 3))):
        for c, n in zip(("x", "y"), counts):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (int(70 + 3 * i), 74), (value, 0, 0)).save(d / f"{i}.png")
                value += 10
    return root


def _image_ids(x):
    """The red value (0..255) of each image of a normalised ImageNet-statistics batch."""
    red = x[:, 0, 8, 8] * IMAGENET_STD[0] + 0.485
    return [int(round(v)) for v in (red * 255).tolist()]


def _all(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert str(match) in msg and "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- backend selection (no DALI needed)


def test_auto_is_torch_on_cpu_and_backend_names_are_checked():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", None) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(UsageError):
        resolve_backend("opencv", None)
    *_, info = build_loaders("digits", None, 100, workers=0)
    assert info.backend == "torch"


def test_dali_that_does_not_import_is_a_one_line_usage_error(monkeypatch):
    monkeypatch.setattr(dali_mod, "_IMPORT", {})
    monkeypatch.setattr(dali_mod, "_IMPORT_ERROR", {"error": "ModuleNotFoundError: No module named 'nvidia.dali'"})
    with pytest.raises(UsageError) as info:
        build_loaders("digits", None, 100, workers=0, backend="dali")
    msg = str(info.value)
    assert "pip install nvidia-dali-cuda130" in msg and "\n" not in msg and "--data-backend torch" in msg
    # auto quietly falls back to torch, even on a CUDA device.
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"


@needs_dali
def test_auto_picks_dali_on_cuda_when_it_runs(monkeypatch):
    monkeypatch.setattr(dali_mod, "_gpu_probe", lambda device_id: None)
    assert resolve_backend("auto", torch.device("cuda", 0)) == "dali"
    monkeypatch.setattr(dali_mod, "_gpu_probe", lambda device_id: "CUDA driver version is insufficient")
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    with pytest.raises(UsageError, match="insufficient"):
        resolve_backend("dali", torch.device("cuda", 0))


# --------------------------------------------------------------------------- image folders


@needs_dali
@pytest.mark.parametrize("size", [28, 31])  # 31: odd centre-crop margins (torchvision rounds half to even)
def test_folder_batches_equal_torch_without_augmentation(folder, size):
    kw = dict(eval_batch_size=3, workers=0, seed=4, image_size=size, augment=False)
    loaders = {b: build_loaders("folder", str(folder), 4, backend=b, **kw) for b in ("torch", "dali")}
    assert loaders["dali"][2].backend == "dali" and loaders["dali"][2].class_names == loaders["torch"][2].class_names
    for part in (0, 1):  # train (shuffled, augmentation off), val
        t, d = loaders["torch"][part], loaders["dali"][part]
        assert len(t) == len(d)
        t.set_epoch(1), d.set_epoch(1)
        tb, db = _all(t), _all(d)
        assert len(tb) == len(db) == len(d)
        for (xt, yt), (xd, yd) in zip(tb, db):
            assert xd.shape == xt.shape and xd.dtype == torch.float32 and xd.is_contiguous()
            assert yd.dtype == torch.int64 and torch.equal(yd, yt)
            diff = (xd - xt).abs()
            assert diff.max() <= 2 * LEVEL and diff.mean() <= 0.5 * LEVEL, (diff.max() / LEVEL, diff.mean() / LEVEL)


@needs_dali
def test_folder_labels_match_imagefolder(folder):
    tr, va, info = build_loaders("folder", str(folder), 4, eval_batch_size=5, workers=0, image_size=16,
                                 backend="dali")
    ref = ImageFolder(str(folder / "train"))
    assert info.class_names == ref.classes == ["ant", "bee", "cat"]
    assert tr.samples == ref.samples
    val_ref = [ref.class_to_idx[os.path.basename(os.path.dirname(p))]
               for p, _ in ImageFolder(str(folder / "val")).samples]
    assert torch.cat([y for _, y in va]).tolist() == val_ref
    tr.set_epoch(0)
    order = tr.batch_sampler.shard_indices()
    assert torch.cat([y for _, y in tr]).tolist() == [ref.targets[i] for i in order[: len(tr) * 4]]


@needs_dali
def test_folder_augmentation_is_seeded_per_epoch(folder):
    tr, _, _ = build_loaders("folder", str(folder), 4, workers=0, image_size=16, backend="dali", seed=1)
    tr.set_epoch(0)
    a, b = _all(tr), _all(tr)
    assert len(a) == 3 and all(x.shape == (4, 3, 16, 16) for x, _ in a)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))  # same (seed, epoch): same batches
    tr.set_epoch(1)
    assert not torch.equal(_all(tr)[0][0], a[0][0])


@needs_dali
def test_two_shards_partition_the_training_epoch(ids):
    seen = []
    for rank in range(2):
        kw = dict(workers=0, seed=3, image_size=16, augment=False, rank=rank, world_size=2)
        d, _, _ = build_loaders("folder", str(ids), 3, backend="dali", **kw)
        t, _, _ = build_loaders("folder", str(ids), 3, backend="torch", **kw)
        d.set_epoch(2), t.set_epoch(2)
        got = [i for x, _ in d for i in _image_ids(x)]
        assert len(d) == 2 and len(got) == 6
        assert got == [i for x, _ in t for i in _image_ids(x)]  # the torch backend's shard, in its order
        seen.append(got)
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(10, 130, 10))


@needs_dali
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_counts_every_image_once(ids, world_size):
    """7 val images, batch 3 (does not divide): no duplicates from DALI's pad_last_batch, two passes."""
    every = []
    for rank in range(world_size):
        _, va, _ = build_loaders("folder", str(ids), 3, workers=0, image_size=16, backend="dali",
                                 rank=rank, world_size=world_size)
        passes = [[i for x, _ in va for i in _image_ids(x)] for _ in range(2)]  # the pipeline is reused
        assert passes[0] == passes[1]
        assert len(va) == -(-len(passes[0]) // 3)
        every += passes[0]
    assert sorted(every) == every == list(range(130, 200, 10))


@needs_dali
def test_channels_last_is_a_view_of_dali_nhwc_output(folder):
    kw = dict(eval_batch_size=5, workers=0, image_size=16, backend="dali")
    _, va, _ = build_loaders("folder", str(folder), 4, channels_last=True, **kw)
    _, va_chw, _ = build_loaders("folder", str(folder), 4, **kw)
    x = next(iter(va))[0]
    assert x.shape == (5, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    base = x._base  # the tensor DALI handed over, [B,H,W,C]
    assert base is not None and base.shape == (5, 16, 16, 3) and base.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, next(iter(va_chw))[0], rtol=0, atol=0)


@needs_dali
def test_float16_output(folder):
    _, va, _ = build_loaders("folder", str(folder), 4, workers=0, image_size=16, backend="dali", dtype=torch.float16)
    _, va32, _ = build_loaders("folder", str(folder), 4, workers=0, image_size=16, backend="dali")
    x, x32 = next(iter(va))[0], next(iter(va32))[0]
    assert x.dtype == torch.float16
    torch.testing.assert_close(x.float(), x32, rtol=0, atol=4e-3)


# --------------------------------------------------------------------------- in-memory arrays


@pytest.fixture
def cifar10(tmp_path):
    """cifar-10-batches-py with 5 x 8 training rows and 13 test rows (bytes keys, like the originals)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    def dump(name, obj):
        with open(root / name, "wb") as f:
            pickle.dump(obj, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                                 b"labels": rng.integers(0, 10, 8).tolist()})
    dump("test_batch", {b"data": rng.integers(0, 256, (13, 3072), dtype=np.uint8),
                        b"labels": rng.integers(0, 10, 13).tolist()})
    dump("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return root


def _expected_train(loader, images, indices, epoch, mean, std, flip):
    """The pad-4 crop + flip of ``loader.augmentation(epoch)`` done in NumPy, normalised."""
    start, flips = loader.augmentation(epoch)
    pad = loader.pad
    out = []
    for i in indices:
        side = images[i].shape[0]
        padded = np.pad(images[i], ((pad, pad), (pad, pad), (0, 0)))
        y, x = start[i] + pad
        crop = padded[y:y + side, x:x + side]
        if flip and flips[i]:
            crop = crop[:, ::-1]
        out.append(torch.from_numpy(crop.astype(np.float32) / 255).permute(2, 0, 1))
    x = torch.stack(out)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@needs_dali
def test_cifar_layout_arrays_through_dali(cifar10):
    kw = dict(eval_batch_size=5, workers=0, seed=2)
    ttr, tva, _ = build_loaders("cifar10", str(cifar10), 16, backend="torch", **kw)
    dtr, dva, info = build_loaders("cifar10", str(cifar10), 16, backend="dali", **kw)
    assert info.backend == "dali" and (len(dtr), len(dva)) == (len(ttr), len(tva)) == (2, 3)
    # Evaluation: no augmentation, exactly the torch backend's batches (lossless source).
    tb, db = _all(tva), _all(dva)
    assert [len(y) for _, y in db] == [5, 5, 3]
    for (xt, yt), (xd, yd) in zip(tb, db):
        torch.testing.assert_close(xd, xt, rtol=0, atol=1e-5)
        assert torch.equal(yd, yt)
    # Training: the torch backend's order, with the loader's own crop offsets and flips.
    images = dtr.source.images
    for epoch in (0, 1):
        ttr.set_epoch(epoch), dtr.set_epoch(epoch)
        order = ttr.batch_sampler.shard_indices()
        got = _all(dtr)
        assert torch.equal(torch.cat([y for _, y in got]), torch.cat([y for _, y in ttr]))
        for b, (x, _) in enumerate(got):
            expect = _expected_train(dtr, images, order[16 * b:16 * (b + 1)], epoch, CIFAR10_MEAN, CIFAR10_STD, True)
            torch.testing.assert_close(x, expect, rtol=0, atol=1e-5)
    start, flips = dtr.augmentation(1)
    assert start.min() == -4 and start.max() == 4 and 0 < flips.mean() < 1


@needs_dali
def test_digits_are_cropped_but_not_flipped():
    tr, va, info = build_loaders("digits", None, 100, workers=0, backend="dali", seed=0, channels_last=True)
    assert not tr.flip and tr.augment and info.backend == "dali"
    tr.set_epoch(0)
    x, _ = next(iter(tr))
    assert x.is_contiguous(memory_format=torch.channels_last)
    expect = _expected_train(tr, tr.source.images, tr.batch_sampler.shard_indices()[:100], 0, DIGITS_MEAN,
                             DIGITS_STD, False)
    torch.testing.assert_close(x, expect, rtol=0, atol=1e-5)
    assert sum(len(y) for _, y in va) == 360


@needs_dali
def test_array_shards_cover_evaluation_once(cifar10):
    labels = []
    for rank in range(2):
        _, va, _ = build_loaders("cifar10", str(cifar10), 8, eval_batch_size=5, workers=0, backend="dali",
                                 rank=rank, world_size=2)
        labels += [y for _, y in va]
    with open(cifar10 / "test_batch", "rb") as f:
        assert torch.cat(labels).tolist() == pickle.load(f, encoding="bytes")[b"labels"]


@needs_dali
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_cifar_class_folders_through_dali_equal_the_pickles(tmp_path, fmt):
    """The class-folder layout decodes into the pickles' arrays: DALI's batches are the same."""
    from test_cifar_folders import make_cifar_pair

    pickles, tree = make_cifar_pair(tmp_path, fmt=fmt, eval_name="val")
    kw = dict(eval_batch_size=7, workers=0, seed=4, backend="dali")
    ptr, pva, _ = build_loaders("cifar10", str(pickles), 8, **kw)
    ttr, tva, info = build_loaders("cifar10", str(tree), 8, **kw)
    assert info.backend == "dali" and info.layout.endswith("decoded into memory")
    for epoch in (0, 1):
        ptr.set_epoch(epoch), ttr.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(_all(ttr), _all(ptr), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(_all(tva), _all(pva), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@needs_dali
def test_small_folder_through_dali_trains_at_its_size(tmp_path):
    """A folder of 24-px images: DALI's array pipeline at 24 px (pad 3 crop + flip), not its
    224-px file pipeline; evaluation equals the torch backend's."""
    from adautomix_fast.data.transforms import IMAGENET_MEAN

    from test_cifar_folders import make_small_folder

    root = make_small_folder(tmp_path / "d", size=(24, 24))
    kw = dict(eval_batch_size=3, workers=0, seed=1)
    _, tva, tinfo = build_loaders("folder", str(root), 4, backend="torch", **kw)
    dtr, dva, dinfo = build_loaders("folder", str(root), 4, backend="dali", **kw)
    assert dinfo.image_size == tinfo.image_size == 24 and dinfo.layout == tinfo.layout
    assert isinstance(dtr, dali_mod.DaliArrayLoader) and dtr.pad == 3 and dtr.flip
    for (xt, yt), (xd, yd) in zip(_all(tva), _all(dva), strict=True):
        torch.testing.assert_close(xd, xt, rtol=0, atol=1e-5)
        assert torch.equal(yd, yt)
    dtr.set_epoch(0)
    order = dtr.batch_sampler.shard_indices()
    for b, (x, _) in enumerate(_all(dtr)):
        expect = _expected_train(dtr, dtr.source.images, order[4 * b:4 * (b + 1)], 0, IMAGENET_MEAN, IMAGENET_STD,
                                 True)
        torch.testing.assert_close(x, expect, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- per-image augmentation, resuming


@pytest.fixture
def gradients(tmp_path):
    """Lossless PNG gradients, sizes chosen so that some never fit a RandomResizedCrop attempt
    (400x10 and 10x400: the aspect-clamped centre crop): train 2 x 6, val 2 x 1."""
    root = tmp_path / "gradients"
    sizes = [(40, 30), (30, 60), (400, 10), (10, 400), (64, 64), (90, 25)]
    for split, n in (("train", 6), ("val", 1)):
        for c in ("a", "b"):
            for i, (w, h) in enumerate(sizes[:n]):
                y, x = np.mgrid[0:h, 0:w]
                img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 127 // (w + h)], -1)
                (root / split / c).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img.astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _rrc_window(H, W, area, start):
    """NumPy (float32, operation for operation like the pipeline) reference of dali._rrc_window:
    torchvision's RandomResizedCrop geometry driven by crop_parameters' numbers. (top, left, h, w)."""
    f = np.float32
    h = np.floor(np.sqrt(area[0] * f(H) * f(W)) + f(0.5))
    w = np.floor(np.sqrt(area[1] * f(W) * f(H)) + f(0.5))
    fits = np.flatnonzero((h <= H) & (w <= W) & (h >= 1) & (w >= 1))
    if len(fits):
        ch, cw = int(h[fits[0]]), int(w[fits[0]])
        top = min(int(np.floor(start[0] * f(H - ch + 1))), H - ch)
        left = min(int(np.floor(start[1] * f(W - cw + 1))), W - cw)
        return top, left, ch, cw
    ch, cw = H, W
    if f(W) / f(H) < f(3 / 4):  # tall: the height clamped
        ch = int(np.floor(f(W) * f(4 / 3) + f(0.5)))
    if f(H) / f(W) < f(3 / 4):  # wide: the width clamped
        cw = int(np.floor(f(H) * f(4 / 3) + f(0.5)))
    return (H - ch) // 2, (W - cw) // 2, ch, cw


@needs_dali
@pytest.mark.parametrize("batch_size,rank,world_size", [(4, 0, 1), (3, 1, 2)])
def test_folder_augmentation_is_torchvision_rrc_keyed_by_image(gradients, batch_size, rank, world_size):
    """Each image's crop window and flip come from crop_parameters(seed, epoch, its index) whatever
    the batch size or shard, through torchvision's RandomResizedCrop geometry (fallback included)."""
    import torchvision.transforms.v2.functional as F

    from adautomix_fast.data.sampling import sample_seed
    from adautomix_fast.data.transforms import IMAGENET_MEAN

    assert [int(s) for s in dali_mod.sample_seeds(3, 7, range(50))] == [sample_seed(3, 7, i) for i in range(50)]
    size = 24
    tr, _, _ = build_loaders("folder", str(gradients), batch_size, workers=0, image_size=size, backend="dali",
                             seed=5, rank=rank, world_size=world_size)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    flips = fallbacks = 0
    for epoch in range(3):
        tr.set_epoch(epoch)
        got = torch.cat([x for x, _ in tr])
        order = tr.batch_sampler.shard_indices()[:len(got)]
        area, start, flip = dali_mod.crop_parameters(5, epoch, order)
        for j, i in enumerate(order):
            img = F.pil_to_tensor(Image.open(tr.samples[i][0]).convert("RGB"))
            H, W = img.shape[1:]
            top, left, h, w = _rrc_window(H, W, area[j], start[j])
            ref = F.resized_crop(img, top, left, h, w, [size, size], antialias=True).float() / 255
            ref = (ref.flip(-1) if flip[j] else ref) - mean
            diff = (got[j] - ref / std).abs().max()
            assert diff <= 1.5 * LEVEL, (i, (H, W), (top, left, h, w), diff / LEVEL)  # resize rounding only
            flips += int(flip[j])
            fallbacks += max(H, W) == 400
    assert 0 < flips < 3 * len(order) and fallbacks > 0


@needs_dali
@pytest.mark.parametrize("rank,world_size", [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("dataset", ["cifar10", "folder"])
def test_resume_mid_epoch_yields_the_rest_of_the_epoch(cifar10, folder, dataset, rank, world_size):
    """set_epoch(e, start_batch=k): bitwise batches k.. of the whole epoch (augmentation and labels
    included), for arrays and image folders; the skipped batches are never read; len() unchanged."""
    root, bs = (cifar10, 6) if dataset == "cifar10" else (folder, 2)
    tr, va, _ = build_loaders(dataset, str(root), bs, eval_batch_size=5, workers=0, seed=11, image_size=24,
                              backend="dali", rank=rank, world_size=world_size)
    n = len(tr)
    assert n >= 3
    tr.set_epoch(4)
    whole = _all(tr)
    assert len(whole) == n == tr.remaining()
    plan = tr.batch_sampler.shard_indices()
    read = []  # what each pass hands DALI: the reader's file list / the source's batches
    if dataset == "folder":
        build = tr._build
        tr._build = lambda indices, shard_id, num_shards, keys: (
            read.append(indices[shard_id * len(plan):][:len(plan)] if num_shards > 1 else list(indices)),
            build(indices, shard_id, num_shards, keys))[1]
    for k in range(n + 1):
        read.clear()
        tr.set_epoch(4, start_batch=k)
        assert len(tr) == n and tr.remaining() == n - k and tr.start_batch == k
        rest = _all(tr)
        assert len(rest) == n - k
        for (xa, ya), (xb, yb) in zip(rest, whole[k:]):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
        if dataset == "folder":
            assert read == ([plan[k * bs:]] if k < n else [])  # from batch k on: 0..k-1 never read
        elif k < n:  # the source's plan of the pass: batches k.. only
            assert [b.tolist() for b in tr.source.batches] == [plan[b * bs:(b + 1) * bs] for b in range(k, n)]
    tr.set_epoch(4)  # back to the whole epoch
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_all(tr), whole))
    with pytest.raises(ValueError, match="start_batch"):
        tr.set_epoch(4, start_batch=n + 1)
    with pytest.raises(ValueError, match="start_batch"):
        tr.set_epoch(4, start_batch=-1)
    evaluation = _all(va)
    va.set_epoch(4, start_batch=1)  # accepted and ignored
    assert len(_all(va)) == len(evaluation) == va.remaining() == len(va)


# --------------------------------------------------------------------------- bad input


def _damage(folder):
    bad_train = folder / "train" / "bee" / "2.jpg"
    bad_train.write_bytes(b"\xff\xd8 definitely not a jpeg")
    bad_val = folder / "val" / "ant" / "v1.JPEG"
    data = bad_val.read_bytes()
    bad_val.write_bytes(data[: len(data) // 2])
    return bad_train, bad_val


@needs_dali
def test_corrupt_image_is_named_in_one_line(folder):
    intact = (folder / "val" / "ant" / "v1.JPEG").read_bytes()
    bad_train, bad_val = _damage(folder)
    # validation files are checked before the first step: the truncated one is named at once
    msg = _raises(bad_val, build_loaders, "folder", str(folder), 12, eval_batch_size=7, workers=0, image_size=16,
                  backend="dali")
    assert "truncated JPEG" in msg and "--skip-corrupt" in msg
    bad_val.write_bytes(intact)
    tr, va, _ = build_loaders("folder", str(folder), 12, eval_batch_size=7, workers=0, image_size=16, backend="dali")
    msg = _raises(bad_train, list, tr)
    assert msg.startswith(f"corrupt image file {bad_train} (") and msg.endswith("; remove or replace it")
    bad_val.write_bytes(intact[: len(intact) // 2])  # damaged after the check: DALI's decoder names it
    _raises(bad_val, list, va)
    _jpeg(bad_val, np.random.default_rng(0), (30, 30))  # repaired
    _, va, _ = build_loaders("folder", str(folder), 12, eval_batch_size=2, workers=0, image_size=16, backend="dali")
    gone = folder / "val" / "cat" / "v0.JPEG"
    gone.unlink()  # after the scan: named as the torch backend does
    msg = _raises(gone, list, va)
    assert "disappeared" in msg


@needs_dali
def test_image_dali_cannot_decode_is_named(folder):
    gif = folder / "train" / "ant" / "1.jpg"  # PIL reads a GIF whatever its name; DALI does not
    Image.new("RGB", (20, 20), (1, 2, 3)).save(gif, format="GIF")
    tr, _, _ = build_loaders("folder", str(folder), 12, workers=0, image_size=16, backend="dali")
    msg = _raises(gif, list, tr)
    assert "format DALI cannot decode" in msg and "--data-backend torch" in msg


@pytest.mark.parametrize("backend,workers", [
    pytest.param("dali", 2, marks=needs_dali), ("torch", 0), ("torch", 1)])
def test_skip_corrupt_skips_and_counts(folder, backend, workers):
    bad_train, bad_val = _damage(folder)
    tr, va, _ = build_loaders("folder", str(folder), 4, eval_batch_size=3, workers=workers, image_size=16,
                              backend=backend, skip_corrupt=True, augment=False)
    assert tr.skipped is va.skipped
    if backend == "torch" and workers and HAVE_DALI:
        # DALI's threads may hold a lock when fork() runs: workers then came from a clean forkserver
        # (a forked worker hung this test once DALI pipelines had run in the process).
        assert tr.loader.multiprocessing_context.get_start_method() == "forkserver"
    for epoch in (0, 1):
        tr.set_epoch(epoch)
        batches = _all(tr)
        assert len(batches) == len(tr) == 3 and all(len(y) == 4 for _, y in batches)  # replaced: fixed shapes
        assert sum(len(y) for _, y in va) == 6  # 7 val images, one dropped, none counted twice
    assert set(tr.skipped.files) == {str(bad_train), str(bad_val)} and len(tr.skipped) == 2


@needs_dali
@pytest.mark.parametrize("damage", ["empty class", "missing split"])
def test_folder_layout_errors_are_one_line(folder, damage):
    if damage == "empty class":
        (folder / "train" / "dog").mkdir()
        target = folder / "train" / "dog"
    else:
        import shutil
        shutil.rmtree(folder / "val")
        target = folder / "val"
    _raises(target, build_loaders, "folder", str(folder), 2, workers=0, backend="dali")


# --------------------------------------------------------------------------- CLI


@needs_dali
def test_cli_trains_one_epoch_on_digits_with_dali(tmp_path, capsys, monkeypatch):
    from adautomix_fast.train import main

    monkeypatch.delenv("ADAUTOMIX_DATA", raising=False)
    code = main(["--arch", "tiny", "--workers", "0", "--batch-size", "100", "--epochs", "1", "--img-size", "16",
                 "--mix-samples", "2", "--data-backend", "dali", "--output", str(tmp_path), "--run-name", "r"])
    out = capsys.readouterr().out
    assert code == 0 and "data dali" in out
    with open(tmp_path / "r" / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    start = next(r for r in records if r["type"] == "start")
    epoch = next(r for r in records if r["type"] == "epoch")
    assert start["data_backend"] == "dali" and start["steps_per_epoch"] == 14
    assert epoch["images"] == 360 and epoch["skipped_corrupt"] == 0


@pytest.mark.parametrize("backend", [pytest.param("dali", marks=needs_dali), "torch"])
def test_cli_skip_corrupt_trains_and_counts(tmp_path, capsys, monkeypatch, backend):
    from adautomix_fast.train import main

    rng = np.random.default_rng(5)
    for split in ("train", "val"):
        for c in ("a", "b"):
            for i in range(5):
                _jpeg(tmp_path / "data" / split / c / f"{i}.jpg", rng, (20, 18))
    (tmp_path / "data" / "train" / "a" / "3.jpg").write_bytes(b"this is not a jpeg")
    args = ["--arch", "tiny", "--workers", "0", "--dataset", "folder", "--img-size", "16", "--batch-size", "5",
            "--epochs", "1", "--mix-samples", "2", "--data-dir", str(tmp_path / "data"), "--data-backend", backend,
            "--output", str(tmp_path / "runs"), "--run-name", "r"]
    assert main(args) == 2 and "corrupt image file" in capsys.readouterr().err  # stops without the flag
    assert main(args + ["--skip-corrupt"]) == 0
    assert f"data {backend}" in capsys.readouterr().out
    with open(tmp_path / "runs" / "r" / "log.jsonl") as f:
        epoch = [json.loads(line) for line in f][-1]
    assert epoch["type"] == "epoch" and epoch["skipped_corrupt"] == 1 and epoch["images"] == 10


def test_bench_data_writes_results(tmp_path):
    """bench/data.py at toy size: every case measured or reported unmeasured with a reason."""
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:  # bench/ is a folder of the repo, not an installed package
        sys.path.insert(0, root)
    from bench import data as bench_data

    argv = ["--out", str(tmp_path), "--images", "16", "--batch-size", "4", "--img-size", "32", "--epochs", "1",
            "--workers", "0"]
    assert bench_data.main(argv) == 0
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    with open(tmp_path / path) as f:
        results = json.load(f)
    cases = {k.rsplit("/", 1)[1]: r for k, r in results["cases"].items() if k.startswith("data/")}
    assert set(cases) == {"torch", "torch-gpu", "dali-cpu", "dali-gpu"}
    for name, r in cases.items():
        assert r["error"] is None, (name, r["error"])
        assert (r.get("images_per_s") or 0) > 0 or r["unmeasured"], name
    assert cases["torch"]["images_per_s"] > 0
    if not HAVE_DALI:
        assert cases["dali-cpu"]["unmeasured"] == "DALI not installed"
    else:
        assert any(k.endswith("dali-cpu_over_torch") for k in results["ratios"])


# ---------------------------------------------------------------------- GPU (make gpu-check, where DALI is installed)


@needs_dali
@pytest.mark.gpu
def test_gpu_pipelines_match_the_cpu_ones(folder, cifar10):
    """Mixed nvJPEG decode + GPU resize/crop/normalise vs the CPU-only pipeline on the same files."""
    cuda = torch.device("cuda", torch.cuda.current_device())
    kw = dict(eval_batch_size=3, workers=2, image_size=24, backend="dali", augment=False, seed=1)
    gpu = build_loaders("folder", str(folder), 4, device=cuda, channels_last=True, **kw)
    cpu = build_loaders("folder", str(folder), 4, **kw)
    assert gpu[2].backend == "dali"
    for part in (0, 1):
        gpu[part].set_epoch(1), cpu[part].set_epoch(1)
        for (xg, yg), (xc, yc) in zip(_all(gpu[part]), _all(cpu[part])):
            assert xg.device == cuda and yg.device == cuda and xg.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(yg.cpu(), yc)
            diff = (xg.cpu() - xc).abs()  # nvJPEG's IDCT differs from libjpeg-turbo's by a few levels
            assert diff.mean() <= 1.0 * LEVEL and diff.max() <= 12 * LEVEL, (diff.mean() / LEVEL, diff.max() / LEVEL)
    # Arrays: the same crop offsets and flips on the GPU, exactly.
    tg, vg, _ = build_loaders("cifar10", str(cifar10), 16, eval_batch_size=5, workers=0, backend="dali", device=cuda)
    tc, vc, _ = build_loaders("cifar10", str(cifar10), 16, eval_batch_size=5, workers=0, backend="dali")
    for a, b in ((tg, tc), (vg, vc)):
        a.set_epoch(3), b.set_epoch(3)
        for (xg, yg), (xc, yc) in zip(_all(a), _all(b)):
            torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-5)
            assert torch.equal(yg.cpu(), yc)
