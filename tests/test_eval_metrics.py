"""The evaluation suite's pieces against the libraries and by hand: ECE (torchmetrics, the released
tool's sorted-bins bug), FGSM/PGD (torchattacks, the released normalised-space clamp), occlusion
masks, synthesised corruptions, the mixed-sample grid (AdAutoMix and mixup), training curves and
the TensorBoard logger."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from adautomix_fast import AdAutoMix
from adautomix_fast.evaluate import attacks, calibration, occlusion
from adautomix_fast.evaluate.context import HeadClassifier
from adautomix_fast.evaluate.plots import read_data
from adautomix_fast.models import build_classifier

from optional import skip_without, skip_without_requirements

CIFAR_MEAN = torch.tensor((0.5071, 0.4865, 0.4409)).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor((0.2673, 0.2564, 0.2762)).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------- calibration
def probs_with_confidence(conf, pred, num_classes=10):
    """Softmax-like rows whose maximum is exactly ``conf`` at class ``pred``."""
    rows = torch.full((len(conf), num_classes), 0.0, dtype=torch.float64)
    for i, (c, p) in enumerate(zip(conf, pred)):
        rows[i] = (1.0 - c) / (num_classes - 1)
        rows[i, p] = c
    return rows


def test_ece_equals_torchmetrics_with_10_bins():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    labels = torch.randint(0, 10, (500,), generator=g)
    probs = logits.softmax(1)
    result = calibration.calibration_from_probs(probs, labels, "correct")
    from torchmetrics.functional.classification import multiclass_calibration_error

    expected = 100 * float(multiclass_calibration_error(probs, labels, num_classes=10, n_bins=10, norm="l1"))
    default_bins = 100 * float(multiclass_calibration_error(probs, labels, num_classes=10, norm="l1"))
    assert result["ece"] == pytest.approx(expected, abs=1e-4)
    # The diagram's own bins give the same number (no confidence lies on a bin edge here)...
    assert calibration.ece_from_bins(result["bins"]) == pytest.approx(expected, abs=1e-4)
    # ...and 10 bins are not torchmetrics' default (15), which gives another value.
    assert abs(default_bins - expected) > 1e-3
    assert sum(result["bins"]["count"]) == 500


def test_official_ece_differs_on_a_non_monotone_reliability_curve():
    # 4 confident-but-wrong predictions at 0.85, 4 unconfident-but-right ones at 0.25.
    conf = [0.25] * 4 + [0.85] * 4
    pred = [1] * 8
    labels = torch.tensor([1] * 4 + [2] * 4)
    probs = probs_with_confidence(conf, pred)
    result = calibration.calibration_from_probs(probs, labels, "official")
    # Correct: (4 |1 - 0.25| + 4 |0 - 0.85|) / 8 = 0.8 (torchmetrics computes in float32).
    assert result["ece_correct"] == pytest.approx(80.0, abs=1e-4)
    # Released: acc sorted -> [0 x 9, 1], conf sorted -> [0 x 8, .25, .85], paired with the
    # unsorted counts (4 in bin 2, 4 in bin 8): (4 |0 - 0| + 4 |0 - 0.25|) / 8 = 0.125.
    assert result["ece_official"] == pytest.approx(12.5, abs=1e-6)
    assert result["ece"] == result["ece_official"] and result["protocol"] == "official"
    assert result["bins"]["count"][2] == 4 and result["bins"]["count"][8] == 4


def test_official_ece_equals_correct_only_for_a_monotone_curve_without_empty_bins():
    # Every bin filled (4 images at conf (m + 0.5)/10), accuracy rising with confidence: the
    # independent sorts change nothing. 20 classes so that a confidence of 0.05 is possible.
    conf = [(m + 0.5) / 10 for m in range(10) for _ in range(4)]
    hits = [min(4, m // 2) for m in range(10)]                 # 0,0,1,1,2,2,3,3,4,4 right of 4
    labels = torch.tensor([1 if i < hits[m] else 2 for m in range(10) for i in range(4)])
    result = calibration.calibration_from_probs(probs_with_confidence(conf, [1] * 40, 20), labels)
    assert result["ece_official"] == pytest.approx(calibration.ece_from_bins(result["bins"]), abs=1e-9)
    assert result["ece_official"] == pytest.approx(result["ece_correct"], abs=1e-4)
    # Monotone but with empty bins: the sorted arrays slide past the unsorted counts.
    conf = [0.25] * 4 + [0.85] * 4
    labels = torch.tensor([1, 2, 2, 2] + [1, 1, 1, 2])
    result = calibration.calibration_from_probs(probs_with_confidence(conf, [1] * 8), labels)
    assert result["ece_correct"] == pytest.approx(5.0, abs=1e-4) and result["ece_official"] == pytest.approx(0.0)


def test_reliability_bins_are_closed_on_the_right():
    conf = torch.tensor([0.5, 0.5000001, 1.0, 0.1], dtype=torch.float64)
    bins = calibration.reliability_bins(conf, torch.tensor([True, False, True, True]))
    assert bins["count"][4] == 1 and bins["count"][5] == 1 and bins["count"][9] == 1 and bins["count"][0] == 1


# ---------------------------------------------------------------------------- attacks
@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    net = build_classifier("tiny", 10, cifar_stem=True).eval()
    return net, lambda x: net.head_one(net.pooled(x))


def batch(seed=0, n=6, size=16):
    g = torch.Generator().manual_seed(seed)
    x01 = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x01, y


class _Wrapped(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.head_one(self.net.pooled(x))


def test_fgsm_equals_torchattacks_with_normalisation(small_model):
    skip_without("torchattacks")
    import torchattacks

    net, model = small_model
    x01, y = batch()
    ours = attacks.fgsm(model, (x01 - CIFAR_MEAN) / CIFAR_STD, y, 8 / 255, CIFAR_MEAN, CIFAR_STD, "correct")
    atk = torchattacks.FGSM(_Wrapped(net).eval(), eps=8 / 255)   # eval: torchattacks restores the mode it finds
    # With set_normalization_used, torchattacks takes and returns normalised images and attacks
    # in pixel space in between.
    atk.set_normalization_used(mean=CIFAR_MEAN.flatten().tolist(), std=CIFAR_STD.flatten().tolist())
    theirs = atk((x01 - CIFAR_MEAN) / CIFAR_STD, y)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    ours01 = ours * CIFAR_STD + CIFAR_MEAN
    # It is an attack: pixels moved by eps (or clamped), and the loss went up.
    step = (ours01 - x01).abs()
    assert torch.all(((step - 8 / 255).abs() < 1e-5) | (ours01 <= 1e-6) | (ours01 >= 1 - 1e-6))
    loss = torch.nn.functional.cross_entropy
    assert loss(model(ours), y) > loss(model((x01 - CIFAR_MEAN) / CIFAR_STD), y)


def test_pgd_equals_torchattacks_with_the_same_random_start(small_model):
    skip_without("torchattacks")
    import torchattacks

    net, model = small_model
    x01, y = batch(1)
    ours = attacks.pgd(model, (x01 - CIFAR_MEAN) / CIFAR_STD, y, 8 / 255, 2 / 255, 3, CIFAR_MEAN, CIFAR_STD,
                       "correct", generator=torch.Generator().manual_seed(5))
    atk = torchattacks.PGD(_Wrapped(net).eval(), eps=8 / 255, alpha=2 / 255, steps=3, random_start=True)
    atk.set_normalization_used(mean=CIFAR_MEAN.flatten().tolist(), std=CIFAR_STD.flatten().tolist())
    torch.manual_seed(5)   # torchattacks draws its random start from the global generator
    theirs = atk((x01 - CIFAR_MEAN) / CIFAR_STD, y)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ((ours * CIFAR_STD + CIFAR_MEAN) - x01).abs().max() <= 8 / 255 + 1e-5


def test_official_fgsm_reproduces_the_normalised_space_clamp(small_model):
    _, model = small_model
    x01, y = batch(2)
    x = (x01 - CIFAR_MEAN) / CIFAR_STD
    adv = attacks.fgsm(model, x, y, 8 / 255, CIFAR_MEAN, CIFAR_STD, "official")
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
    torch.testing.assert_close(adv, (x + 8 / 255 * g.sign()).clamp(0, 1))
    # Below-mean values (normalised < -eps) become exactly 0, the mean colour...
    below = x < -8 / 255
    assert below.any() and torch.all(adv[below] == 0)
    # ...and where nothing was clamped the pixel step is eps * std (about 1.6/255), not eps.
    free = (adv > 0) & (adv < 1)
    pixel_step = ((adv - x) * CIFAR_STD).abs()
    expected = (8 / 255 * CIFAR_STD).expand_as(adv)
    torch.testing.assert_close(pixel_step[free], expected[free], atol=1e-6, rtol=0)
    assert expected.max() < 2.3 / 255


# ---------------------------------------------------------------------------- occlusion
def test_patch_size_scales_the_released_grid():
    assert occlusion.patch_size(224) == 16 and occlusion.patch_size(32) == 2 and occlusion.patch_size(64) == 4
    from adautomix_fast.errors import UsageError

    with pytest.raises(UsageError, match="does not divide"):
        occlusion.patch_size(32, 3)


@pytest.mark.parametrize("cells", [196, 256, 4])
def test_occlusion_masks_have_exactly_round_r_cells_patches(cells):
    for r in occlusion.RATIOS:
        mask = occlusion.patch_masks(50, cells, r, seed=3)
        expected = int(np.floor(r * cells + 0.5))
        assert mask.shape == (50, cells) and torch.all(mask.sum(1) == expected), (r, cells)


def test_occlusion_masks_are_seeded_and_differ_per_image():
    a = occlusion.patch_masks(20, 256, 0.5, seed=0)
    assert torch.equal(a, occlusion.patch_masks(20, 256, 0.5, seed=0))
    assert not torch.equal(a, occlusion.patch_masks(20, 256, 0.5, seed=1))
    assert len({tuple(row.tolist()) for row in a}) == 20          # one patch set per image


def test_occlude_zeroes_whole_patches_only():
    x = torch.ones(3, 3, 32, 32)
    mask = occlusion.patch_masks(3, 256, 0.3, seed=0)
    out = occlusion.occlude(x, mask, 2)
    k = occlusion.masked_count(0.3, 256)
    assert torch.all((out == 0).sum(dim=(1, 2, 3)) == k * 2 * 2 * 3)
    # The first masked patch of image 0 is exactly its 2x2 block.
    cell = int(mask[0].nonzero()[0])
    r, c = divmod(cell, 16)
    assert torch.all(out[0, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2] == 0)


# ---------------------------------------------------------------------------- synthesised corruptions
def test_synthesised_corruptions_are_seeded_per_image_not_per_batch():
    skip_without("imagecorruptions")
    from adautomix_fast.evaluate.corruption import corrupt_images

    rng = np.random.RandomState(0)
    images = (rng.rand(4, 32, 32, 3) * 255).astype(np.uint8)
    whole = corrupt_images(images, "gaussian_noise", 3, 0, seed=7)
    split = np.concatenate([corrupt_images(images[:2], "gaussian_noise", 3, 0, seed=7),
                            corrupt_images(images[2:], "gaussian_noise", 3, 2, seed=7)])
    assert np.array_equal(whole, split) and not np.array_equal(whole, images)
    assert not np.array_equal(whole, corrupt_images(images, "gaussian_noise", 3, 0, seed=8))
    glass = corrupt_images(images[:1], "glass_blur", 1, 0, seed=7)   # takes its own seed argument
    assert np.array_equal(glass, corrupt_images(images[:1], "glass_blur", 1, 0, seed=7))


def test_images_under_32_px_are_corrupted_at_32_and_boxed_back():
    skip_without("imagecorruptions")
    from PIL import Image as PILImage

    from adautomix_fast.evaluate.corruption import corrupt_images

    small = (np.random.RandomState(1).rand(2, 16, 16, 3) * 255).astype(np.uint8)
    out = corrupt_images(small, "contrast", 5, 0, seed=0)
    assert out.shape == small.shape and not np.array_equal(out, small)
    # contrast is deterministic: the 32 px version of each image, contrasted, averaged 2x2
    from imagecorruptions import corrupt

    big = np.asarray(PILImage.fromarray(small[0]).resize((32, 32), PILImage.BILINEAR))
    expected = np.asarray(PILImage.fromarray(corrupt(big, corruption_name="contrast", severity=5))
                          .resize((16, 16), PILImage.BOX))
    assert np.array_equal(out[0], expected)


# ---------------------------------------------------------------------------- mixed-sample pictures
def test_mix_grid_of_adautomix_shows_sources_masks_and_mix(tmp_path):
    from adautomix_fast.evaluate.mixvis import mix_visual_from_adautomix, render_mix_grid

    torch.manual_seed(0)
    model = AdAutoMix("tiny", 10, cifar_stem=True, mix_samples=3).train()
    x = torch.randn(6, 3, 16, 16)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    plan = model.sample_plan(6, generator=torch.Generator().manual_seed(1))
    vis = mix_visual_from_adautomix(model, x, plan=plan, samples=4)
    # No trace on training: BatchNorm running statistics and the global RNG are untouched.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert (vis.sources.shape == (3, 4, 3, 16, 16) and vis.masks.shape == (4, 3, 16, 16)
            and vis.mixed.shape == (4, 3, 16, 16))
    torch.testing.assert_close(vis.masks.sum(1), torch.ones(4, 16, 16))
    torch.testing.assert_close((vis.masks.unsqueeze(2) * vis.sources.transpose(0, 1)).sum(1), vis.mixed,
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(vis.sources[1, 2], x[plan.index_gen[1, 2]])
    path = render_mix_grid(vis, str(tmp_path / "mix.png"), (0.5,) * 3, (0.25,) * 3)
    with Image.open(path) as im:
        im.verify()
    data = read_data(path)
    assert data["sources"] == 3 and data["samples"] == 4 and data["has_masks"]
    assert data["lam"] == pytest.approx(plan.lam_gen.tolist())
    assert np.allclose(data["mask_means"], vis.masks.mean(dim=(2, 3)).numpy(), atol=1e-6)


def test_mix_grid_of_mixup_shows_scalar_weights(tmp_path):
    from adautomix_fast.evaluate.mixvis import MixVisual, render_mix_grid

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=g)
    perm = torch.randperm(8, generator=g)
    lam = torch.tensor(0.3)
    vis = MixVisual(sources=torch.stack([x, x[perm]]), masks=None, mixed=lam * x + (1 - lam) * x[perm],
                    lam=torch.stack([lam, 1 - lam]), title="mixup, epoch 3")
    path = render_mix_grid(vis, str(tmp_path / "mixup.png"), (0.5,) * 3, (0.25,) * 3, max_samples=5)
    data = read_data(path)
    assert data == {"title": "mixup, epoch 3", "sources": 2, "samples": 5, "lam": pytest.approx([0.3, 0.7]),
                    "has_masks": False, "mask_means": None}
    with pytest.raises(ValueError, match="mixed must be"):
        MixVisual(vis.sources, None, vis.mixed[:, :2], vis.lam).check()


def test_vis_epochs_default_to_ten_pictures_per_run():
    from adautomix_fast.evaluate.mixvis import vis_epochs

    assert vis_epochs(800) == list(range(80, 801, 80))
    assert vis_epochs(3) == [1, 2, 3] and vis_epochs(25, every=10) == [10, 20, 25]


@pytest.mark.parametrize("method", ["vanilla", "mixup", "cutmix", "adautomix"])
def test_mix_grid_of_every_methods_visualize_dict(method, tmp_path):
    skip_without_requirements(method)
    from adautomix_fast.config import resolve
    from adautomix_fast.evaluate.mixvis import MixVisual, render_mix_grid
    from adautomix_fast.registry import build_model

    torch.manual_seed(0)
    model = build_model(resolve({"arch": "tiny", "method": method}), 10, cifar_stem=True)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    plan = model.sample_plan(6, generator=torch.Generator().manual_seed(0), image_size=(16, 16))
    d = model.visualize(x, y, plan)
    n, k = MixVisual.from_dict(d).check()
    data = read_data(render_mix_grid(d, str(tmp_path / f"{method}.png"), (0.5,) * 3, (0.25,) * 3))
    assert data["sources"] == n and data["samples"] == k == 4
    assert data["has_masks"] == (d["masks"] is not None)


# ---------------------------------------------------------------------------- curves and TensorBoard
def test_training_curves_plot_every_head_loss_and_lr(tmp_path):
    from adautomix_fast.evaluate.curves import render_training_curves

    rows = [{"epoch": e, "lr": 0.1 / e, "train_loss": 3.0 - e, "teacher_one_top1": 10.0 * e,
             "teacher_one_top5": 30.0 * e, "student_one_top1": 9.0 * e, "student_one_top5": 29.0 * e,
             "best_top1": 10.0 * e} for e in (1, 2, 3)]
    summary = tmp_path / "summary.csv"
    with open(summary, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    path = render_training_curves(str(summary), str(tmp_path / "curves.png"))
    data = read_data(path)
    assert data["epoch"] == [1, 2, 3] and data["teacher_one_top1"] == [10, 20, 30]
    assert data["train_loss"] == [2, 1, 0] and data["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert "best_top1" not in data and "student_one_top1" in data


def test_tensorboard_logger_writes_every_numeric_field(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from adautomix_fast.evaluate.tblog import ScalarLogger

    with ScalarLogger(str(tmp_path)) as tb:
        n = tb.log({"type": "train", "step": 20, "loss": 1.5, "lr": torch.tensor(0.1), "use_mixup": True,
                    "impl": "reference", "img_per_s": None})
        tb.log({"type": "epoch", "step": 40, "epoch": 1, "teacher_one_top1": 55.0})
    assert n == 3
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"train/loss", "train/lr", "train/use_mixup", "epoch/epoch", "epoch/teacher_one_top1"}
    (loss,) = acc.Scalars("train/loss")
    assert loss.step == 20 and loss.value == pytest.approx(1.5)
    assert acc.Scalars("epoch/teacher_one_top1")[0].step == 40


def test_head_classifier_is_the_heads_logits():
    model = AdAutoMix("tiny", 10, cifar_stem=True).eval()
    x = torch.randn(2, 3, 16, 16)
    for head in model.HEADS:
        torch.testing.assert_close(HeadClassifier(model, head)(x), model.eval_logits(x, (head,))[head])


class _OneHeadModel(torch.nn.Module):
    """The interface a baseline's model offers (only a student and its one-hot head)."""

    HEADS = ("student_one",)
    HEADLINE = "student_one"

    def __init__(self):
        super().__init__()
        self.student = build_classifier("tiny", 10, cifar_stem=True)

    def head_network(self, name):
        if name not in self.HEADS:
            raise ValueError(name)
        return self.student, "head_one"

    def eval_logits(self, x, heads=None):
        return {"student_one": self.student.head_one(self.student.pooled(x))}


def test_a_model_with_fewer_heads_defaults_to_its_headline_and_refuses_others():
    from adautomix_fast.errors import UsageError
    from adautomix_fast.evaluate.cam import _mix_pairs
    from adautomix_fast.evaluate.context import check_head

    model = _OneHeadModel().eval()
    assert check_head(model, None) == "student_one" and check_head(model, "student_one") == "student_one"
    with pytest.raises(UsageError, match="no such head; choose one of student_one$"):
        check_head(model, "teacher_one")

    class Ctx:
        pass

    ctx = Ctx()
    ctx.model = model
    x = torch.randn(4, 3, 16, 16)
    mixed, mixer = _mix_pairs(ctx, x)         # no generator: plain mixup at 0.5
    assert mixer == "mixup" and torch.allclose(mixed, 0.5 * x + 0.5 * x.roll(-1, 0))
