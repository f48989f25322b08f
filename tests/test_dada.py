"""DADA's searched policies (``--augment dada``): every operation against a transcription of
DADA's own functions (github.com/VDIGPKU/DADA, fast-autoaugment/FastAutoAugment/augmentations.py)
given the same draws, the sub-policy law, the pipeline's order, and the CLI."""

from __future__ import annotations

import random
from unittest import mock

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps
import pytest
import torch
import yaml

from adautomix_fast.config import resolve
from adautomix_fast.data.dada import POLICIES, RANGES, SIGNED, CutoutTensor, DADAPolicy, apply_op, policy_for
from adautomix_fast.data.transforms import AugmentRecipe, build_transforms
from adautomix_fast.errors import UsageError
from adautomix_fast.registry import build_model

from cli_helpers import read_log, run_cli


# ---------------------------------------------------------------------------- DADA's code, transcribed
def _mirror(v):
    return -v if random.random() > 0.5 else v


def dada_op(img, name, v):
    """DADA's operation ``name`` at value ``v`` (its augmentations.py, with random_mirror True)."""
    if name == "ShearX":
        return img.transform(img.size, PIL.Image.AFFINE, (1, _mirror(v), 0, 0, 1, 0))
    if name == "ShearY":
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, 0, _mirror(v), 1, 0))
    if name == "TranslateX":
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, _mirror(v) * img.size[0], 0, 1, 0))
    if name == "TranslateY":
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, 0, 0, 1, _mirror(v) * img.size[1]))
    if name == "Rotate":
        return img.rotate(_mirror(v))
    if name == "AutoContrast":
        return PIL.ImageOps.autocontrast(img)
    if name == "Invert":
        return PIL.ImageOps.invert(img)
    if name == "Equalize":
        return PIL.ImageOps.equalize(img)
    if name == "Solarize":
        return PIL.ImageOps.solarize(img, v)
    if name == "Posterize":
        return PIL.ImageOps.posterize(img, int(v))
    if name in ("Contrast", "Color", "Brightness", "Sharpness"):
        return getattr(PIL.ImageEnhance, name)(img).enhance(v)
    if name == "Cutout":
        if v <= 0.0:
            return img
        v = v * img.size[0]
        w, h = img.size
        x0, y0 = np.random.uniform(w), np.random.uniform(h)
        x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
        xy = (x0, y0, min(w, x0 + v), min(h, y0 + v))
        img = img.copy()
        PIL.ImageDraw.Draw(img).rectangle(xy, (125, 123, 114))
        return img
    raise AssertionError(name)


def dada_apply_augment(img, name, level):
    level = min(max(level, 0.0), 1.0)
    low, high = RANGES[name]
    return dada_op(img.copy(), name, level * (high - low) + low)


def _image(seed, side=32):
    g = torch.Generator().manual_seed(seed)
    return PIL.Image.fromarray(torch.randint(0, 256, (side, side, 3), generator=g, dtype=torch.uint8).numpy())


# ---------------------------------------------------------------------------- the operations
@pytest.mark.parametrize("name", sorted(RANGES))
@pytest.mark.parametrize("level", [0.0, 0.2, 0.4751467704772949, 0.5, 0.7428610324859619, 1.0])
def test_every_operation_equals_dadas_given_the_same_draws(name, level):
    for seed, mirror_draw in ((0, 0.3), (1, 0.8)):
        img = _image(seed)
        centre = (7.25, 30.5)
        # DADA draws its sign with random.random() and its Cutout centre with np.random.uniform(side)
        # (low=side, high=1): the same draws, handed to both.
        with mock.patch.object(random, "random", return_value=mirror_draw), \
                mock.patch.object(np.random, "uniform", side_effect=list(centre)):
            want = dada_apply_augment(img, name, level)
        got = apply_op(img, name, level, negate=name in SIGNED and mirror_draw > 0.5, centre=centre)
        assert np.array_equal(np.asarray(got), np.asarray(want)), (name, level, seed)


def test_the_geometric_operations_are_identities_at_level_one_half():
    img = _image(3)
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        assert np.array_equal(np.asarray(apply_op(img, name, 0.5)), np.asarray(img)), name


def test_the_policy_tables_are_dadas_shape_and_name_only_known_operations():
    for name, policy in POLICIES.items():
        assert len(policy) == 25, name
        for sub in policy:
            assert len(sub) == 2 and all(op in RANGES and 0.0 <= p <= 1.0 and 0.0 <= lv <= 1.0 for op, p, lv in sub)
    assert POLICIES["cifar100"][21][0] == ("Rotate", 1.0, 0.0)       # a spot check against genotype.py
    assert policy_for("dada", "cifar100") == "cifar100" and policy_for("dada", "digits") == "svhn"
    assert policy_for("dada", "imagenet") == "imagenet" and policy_for("dada-cifar10", "cifar100") == "cifar10"


# ---------------------------------------------------------------------------- the law of the draws
def test_one_sub_policy_per_image_each_operation_with_its_own_probability():
    """With a policy of two sub-policies whose operations are marked, the counts follow the law:
    each sub-policy half the time, each operation with its probability."""
    policy = DADAPolicy("cifar10")
    policy.sub_policies = ((("Invert", 1.0, 0.5), ("Invert", 0.0, 0.5)),      # always once: inverted
                           (("Invert", 0.5, 0.5), ("Solarize", 0.0, 0.5)))    # half the time
    img = PIL.Image.new("RGB", (4, 4), (10, 10, 10))
    torch.manual_seed(0)
    inverted = sum(np.asarray(policy(img))[0, 0, 0] == 245 for _ in range(4000))
    assert abs(inverted / 4000 - 0.75) < 0.03          # 0.5 x 1 + 0.5 x 0.5


def test_the_policy_depends_on_torchs_generator_only():
    img = _image(5)
    torch.manual_seed(7)
    a = [np.asarray(DADAPolicy("cifar100")(img)) for _ in range(20)]
    random.seed(1), np.random.seed(1)
    torch.manual_seed(7)
    b = [np.asarray(DADAPolicy("cifar100")(img)) for _ in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_cutout_16_zeroes_a_clipped_square_of_the_normalised_image():
    torch.manual_seed(0)
    out = CutoutTensor(16)(torch.ones(3, 32, 32))
    zeros = (out == 0).all(dim=0)
    rows, cols = zeros.any(dim=1).nonzero().flatten(), zeros.any(dim=0).nonzero().flatten()
    assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16 and zeros.sum() == len(rows) * len(cols)


def test_the_pipeline_is_crop_flip_policy_normalise_cutout():
    train, evaluate, size = build_transforms("cifar100", recipe=AugmentRecipe(augment="dada"))
    names = [type(t).__name__ for t in train.transforms]
    assert names[:3] == ["RandomCrop", "RandomHorizontalFlip", "DADAPolicy"]
    assert names.index("Normalize") < names.index("CutoutTensor") == len(names) - 1
    assert "DADAPolicy" not in [type(t).__name__ for t in evaluate.transforms] and size == 32
    x = train(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert train.transforms[-1].length == 16                                  # DADA's 16 of 32 px
    assert build_transforms("digits", 16, AugmentRecipe(augment="dada"))[0].transforms[-1].length == 8
    imagenet_train = build_transforms("imagenet", recipe=AugmentRecipe(augment="dada"))[0]
    imagenet = [type(t).__name__ for t in imagenet_train.transforms]
    assert "DADAPolicy" in imagenet and "CutoutTensor" not in imagenet        # DADA's ImageNet config: no Cutout


# ---------------------------------------------------------------------------- settings and the CLI
def test_augment_is_a_recipe_setting_refused_with_randaugment():
    assert resolve({"augment": "dada", "method": "vanilla"}).augment == "dada"
    with pytest.raises(UsageError, match="two augmentation policies"):
        resolve({"augment": "dada", "randaugment": "rand-m7-n2"})
    assert resolve({}, "table11-dada").augment == "dada" and resolve({}, "table11-dada").method == "dada"
    assert resolve({"method": "dada"}).augment == "dada"
    assert resolve({"method": "dada", "augment": None}).augment is None     # --augment none switches it off


def test_a_digits_run_with_dada_trains_and_records_its_policy(tmp_path, capsys):
    code, out, err = run_cli(["--method", "vanilla", "--augment", "dada", "--arch", "tiny", "--epochs", "1",
                              "-j", "0", "--vis-every", "0", "--output", str(tmp_path), "--run-name", "d"], capsys)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())["augment"] == "dada"
    assert [r for r in read_log(tmp_path / "d") if r["type"] == "epoch"]


def test_the_dada_method_is_vanillas_step_with_the_policy():
    a, b = resolve({"method": "dada"}).to_dict(), resolve({"method": "vanilla", "augment": "dada"}).to_dict()
    assert {k for k in a if a[k] != b[k]} == {"method"}
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    losses = []
    for method in ("dada", "vanilla"):
        torch.manual_seed(0)
        model = build_model(resolve({"method": method, "arch": "tiny"}), 10, cifar_stem=True)
        losses.append(model.step_losses(x, y, model.sample_plan(4))["loss"])
    assert torch.equal(losses[0], losses[1])


def test_dali_with_a_policy_is_one_line_and_writes_nothing(tmp_path, capsys):
    code, _, err = run_cli(["--augment", "dada", "--data-backend", "dali", "--arch", "tiny", "--epochs", "1", "-j", "0",
                            "--output", str(tmp_path / "runs")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--data-backend dali does not implement --augment dada" in err and "--data-backend torch" in err
    assert not (tmp_path / "runs").exists()
