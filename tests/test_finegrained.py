"""Fine-grained readers (cub200, aircraft, cars) on generated files, recipe transforms and
RandAugment."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from adautomix_fast.data import build_loaders
from adautomix_fast.data.randaugment import POLICIES, RandAugment, parse_randaugment
from adautomix_fast.data.sampling import SeededDataset
from adautomix_fast.data.transforms import AugmentRecipe, build_transforms
from adautomix_fast.errors import DataError, UsageError


def jpeg(path, seed, size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def make_cub(root, per_class=(3, 2)):
    """CUB_200_2011 with 3 classes; class c has per_class[0] train and per_class[1] test images."""
    base = root / "CUB_200_2011"
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, split, labels = [], [], []
    i = 0
    for c, name in enumerate(names, 1):
        for k in range(sum(per_class)):
            i += 1
            rel = f"{name}/{name.split('.')[1]}_{k:04d}.jpg"
            jpeg(str(base / "images" / rel), i)
            images.append(f"{i} {rel}")
            split.append(f"{i} {1 if k < per_class[0] else 0}")
            labels.append(f"{i} {c}")
    for fname, lines in (("images.txt", images), ("train_test_split.txt", split), ("image_class_labels.txt", labels),
                         ("classes.txt", [f"{c} {n}" for c, n in enumerate(names, 1)])):
        (base / fname).write_text("\n".join(lines) + "\n")
    return base, names


def make_aircraft(root):
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]                  # a name with a space, as in the set
    (data).mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    ids = {"trainval": [], "test": []}
    n = 0
    for v in variants:
        for split, count in (("trainval", 3), ("test", 2)):
            for _ in range(count):
                n += 1
                image_id = f"{1000000 + n}"
                jpeg(str(data / "images" / f"{image_id}.jpg"), n)
                ids[split].append(f"{image_id} {v}")
    for split, lines in ids.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return variants


def make_cars(root):
    import scipy.io as sio
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TT Hatchback 2011"]
    names = np.empty((1, 3), dtype=object)
    names[0, :] = classes
    sio.savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": names})
    dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    labels = {"train": [1, 2, 3, 1, 2, 3, 3], "test": [1, 2, 3, 2]}
    for split, folder, mat in (("train", "cars_train", base / "devkit" / "cars_train_annos.mat"),
                               ("test", "cars_test", base / "cars_test_annos_withlabels.mat")):
        arr = np.zeros((1, len(labels[split])), dtype=dt)
        for k, c in enumerate(labels[split]):
            fname = f"{k + 1:05d}.jpg"
            jpeg(str(base / folder / fname), 100 * len(folder) + k)
            arr[0, k] = (1, 1, 20, 20, c, fname)
        sio.savemat(str(mat), {"annotations": arr})
    return classes, labels


# ---------------------------------------------------------------------------- readers
def test_cub200_classes_splits_counts(tmp_path):
    base, names = make_cub(tmp_path)
    for data_dir in (tmp_path, base):                                 # the folder or its parent
        train, loader_val, info = build_loaders("cub200", str(data_dir), 4, workers=0, seed=0)
        assert info.num_classes == 3 and info.class_names == names
        assert (info.train_size, info.val_size) == (9, 6)
    from adautomix_fast.data.finegrained import load_cub200
    tr, te, _ = load_cub200(str(base))
    assert sorted(tr.targets) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and sorted(te.targets) == [0, 0, 1, 1, 2, 2]
    assert all("/images/001." in p for p, y in tr.samples if y == 0)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, _ = next(iter(loader_val))
    assert xv.shape[1:] == (3, 224, 224)


def test_aircraft_classes_splits_counts(tmp_path):
    variants = make_aircraft(tmp_path)
    train, val, info = build_loaders("aircraft", str(tmp_path), 3, workers=0, image_size=32)
    assert info.class_names == variants and (info.train_size, info.val_size) == (9, 6)
    from adautomix_fast.data.finegrained import load_aircraft
    tr, te, _ = load_aircraft(str(tmp_path / "fgvc-aircraft-2013b"))   # the folder itself works too
    assert tr.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2] and te.targets == [0, 0, 1, 1, 2, 2]
    x, _ = next(iter(train))
    assert x.shape == (3, 3, 32, 32)


def test_cars_classes_splits_counts(tmp_path):
    classes, labels = make_cars(tmp_path)
    train, val, info = build_loaders("cars", str(tmp_path), 2, workers=0, image_size=32)
    assert info.class_names == classes and (info.train_size, info.val_size) == (7, 4)
    from adautomix_fast.data.finegrained import load_cars
    tr, te, _ = load_cars(str(tmp_path))
    assert tr.targets == [c - 1 for c in labels["train"]] and te.targets == [c - 1 for c in labels["test"]]
    assert tr.samples[0][0].endswith(os.path.join("cars_train", "00001.jpg"))
    assert sum(len(b[1]) for b in val) == 4                           # every test image once


@pytest.mark.parametrize("name,make,remove,message", [
    ("cub200", make_cub, "CUB_200_2011/train_test_split.txt", "missing .*train_test_split.txt"),
    ("cub200", make_cub, "CUB_200_2011/images/002.Laysan_Albatross/Laysan_Albatross_0001.jpg",
     "image .*Laysan_Albatross_0001.jpg is missing"),
    ("aircraft", make_aircraft, "fgvc-aircraft-2013b/data/variants.txt", "missing .*variants.txt"),
    ("aircraft", make_aircraft, "fgvc-aircraft-2013b/data/images/1000002.jpg", "image .*1000002.jpg is missing"),
    ("cars", make_cars, "stanford_cars/devkit/cars_meta.mat", "missing .*cars_meta.mat"),
    ("cars", make_cars, "stanford_cars/cars_test/00002.jpg", "image .*00002.jpg is missing"),
])
def test_missing_files_are_one_line_data_errors(tmp_path, name, make, remove, message):
    make(tmp_path)
    os.remove(tmp_path / remove)
    with pytest.raises(DataError, match=message) as e:
        build_loaders(name, str(tmp_path), 2, workers=0)
    assert "\n" not in str(e.value)


def test_malformed_tables_are_one_line_data_errors(tmp_path):
    base, _ = make_cub(tmp_path)
    (base / "image_class_labels.txt").write_text("1 1\n2\n")
    with pytest.raises(DataError, match=r"line 2 is not '<id> <value>'"):
        build_loaders("cub200", str(tmp_path), 2, workers=0)
    data = tmp_path / "air"
    make_aircraft(data)
    with open(data / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt", "a") as f:
        f.write("1000099 Concorde\n")
    with pytest.raises(DataError, match="aircraft: cannot read the test split"):
        build_loaders("aircraft", str(data), 2, workers=0)


def test_dali_is_refused_for_recipes_and_finegrained_sets(tmp_path):
    make_cub(tmp_path)
    with pytest.raises(UsageError, match="--data-backend torch") as e:
        build_loaders("cub200", str(tmp_path), 2, workers=0, backend="dali")
    assert "\n" not in str(e.value)
    _, _, info = build_loaders("cub200", str(tmp_path), 2, workers=0, backend="auto", device="cpu")
    assert info.backend == "torch"
    with pytest.raises(UsageError, match="recipes' augmentation.*--data-backend torch"):
        build_loaders("digits", None, 2, workers=0, backend="dali", recipe=AugmentRecipe(randaugment="rand-m7"))


# ---------------------------------------------------------------------------- transforms
def test_finegrained_transforms_are_the_released_ones():
    train, evaluate, size = build_transforms("cub200")
    names = [type(t).__name__ for t in train.transforms[:3]]
    assert names == ["Resize", "RandomResizedCrop", "RandomHorizontalFlip"] and size == 224
    assert train.transforms[0].size == [256] and train.transforms[1].scale == (0.5, 1.0)
    assert [type(t).__name__ for t in evaluate.transforms[:2]] == ["Resize", "CenterCrop"]
    img = Image.fromarray(np.zeros((300, 500, 3), dtype=np.uint8))
    assert evaluate(img).shape == (3, 224, 224)


def test_recipe_transforms_for_cifar(tmp_path):
    swin = AugmentRecipe(train_crop="rrc", crop_scale=0.8, interpolation="bicubic", randaugment="rand-m7-n2-mstd0.5")
    train, evaluate, size = build_transforms("cifar100", 224, swin)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    x = train(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and size == 224
    assert evaluate(img).shape == (3, 224, 224)
    rrc = train.transforms[0]
    assert rrc.scale == (0.8, 1.0) and rrc.interpolation.value == "bicubic"
    assert isinstance(train.transforms[2], RandAugment)
    conv = AugmentRecipe(train_crop="pad-reflect", randaugment="rand-m7-n2-mstd0.5")
    train, evaluate, size = build_transforms("cifar100", None, conv)
    assert train.transforms[0].padding_mode == "reflect" and size == 32 and train(img).shape == (3, 32, 32)
    # the same seed, the same augmentation: reproducible through the data pipeline's seeding
    ds = SeededDataset([(img, 0)] * 3, train)
    a, b = ds[(1, 1234)], ds[(1, 1234)]
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], ds[(1, 99)][0])


def test_randaugment_parse_and_draws():
    spec = parse_randaugment("rand-m7-n2-mstd0.5")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std) == (2, 7.0, 0.5)
    assert parse_randaugment("rand-m9").num_ops == 2
    for bad in ("m7", "rand-n2", "rand-m11", "rand-m7-inc1"):
        with pytest.raises(UsageError):
            parse_randaugment(bad)
    ra = RandAugment(spec)
    # the level law: N(7, 0.5) clipped to [0, 10], mapped linearly onto the op's range
    torch.manual_seed(0)
    levels = torch.tensor([ra._magnitude(0.0, 10.0) for _ in range(4000)])
    assert abs(levels.mean().item() - 7.0) < 0.05 and abs(levels.std().item() - 0.5) < 0.05
    assert ra._magnitude(256.0, 0.0) < 256.0 * 0.5                    # Solarize's decreasing range
    # every op keeps the image type and size
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    changed = 0
    for name, span, _ in POLICIES:
        out = ra._apply(img, name, (span[0] + span[1]) / 2 if span else 0.0)
        assert isinstance(out, Image.Image) and out.size == img.size
        changed += name != "Identity" and not np.array_equal(np.asarray(out), np.asarray(img))
    assert changed >= len(POLICIES) - 2
    tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    torch.manual_seed(5)
    a = ra(tensor)
    torch.manual_seed(5)
    assert torch.equal(ra(tensor), a) and a.dtype == torch.uint8 and a.shape == tensor.shape
