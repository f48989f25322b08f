"""SmoothMix: its mask against OpenMixup's roll-and-crop construction given the same draws, its
label weight, its plan, both steps, and a comparison run."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from adautomix_fast import compare
from adautomix_fast.config import resolve
from adautomix_fast.methods.base import pair_mixed_cross_entropy
from adautomix_fast.methods.smoothmix import SmoothMix, SmoothPlan, smooth_mask
from adautomix_fast.registry import build_model

K = 7


def openmixup_smoothmix(img, perm, col_draw, row_draw, u):
    """OpenMixup's smoothmix for given draws (randint over w, then over h, then rand for sigma),
    as it computes it: a 2h x 2h grid of (column, row) coordinates, rolled along the rows by the
    row offset and along the columns by the column offset, its centre h x h cropped, a Gaussian
    around the grid's middle. Returns (mixed images, kernel, OpenMixup's lam)."""
    b, _, h, w = img.shape
    assert h == w and h % 2 == 0, "OpenMixup's construction needs even, square images"
    rand_w = int(col_draw - w / 2)
    rand_h = int(row_draw - h / 2)
    sigma = (torch.tensor([u], dtype=torch.float32) / 4 + 0.25) * h
    s = 2 * h
    coords = torch.arange(s)
    grid = torch.stack([coords.repeat(s, 1), coords.repeat(s, 1).t()], dim=-1)   # [i, j] = (j, i)
    grid = torch.roll(torch.roll(grid, rand_h, 0), rand_w, 1)
    crop = s // 4
    grid = grid[crop:s - crop, crop:s - crop]
    kernel = torch.exp(-torch.sum((grid - (s - 1) / 2) ** 2, dim=-1) / (2 * sigma ** 2)).view(h, h)
    mixed = img * (1 - kernel) + img[perm] * kernel
    return mixed, kernel, torch.sum(kernel) / (h * w)


def _plan(b, col, row, u, seed=0):
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(seed))
    return SmoothPlan(perm, torch.tensor([row, col]), torch.tensor(u, dtype=torch.float32))


@pytest.mark.parametrize("side", [16, 32])
@pytest.mark.parametrize("seed", range(5))
def test_smoothmix_equals_openmixup_given_the_same_draws(side, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, side, side, generator=g)
    col, row = (int(v) for v in torch.randint(0, side, (2,), generator=g))
    u = float(torch.rand((), generator=g))
    plan = _plan(6, col, row, u, seed)
    model = SmoothMix("tiny", K, cifar_stem=True)
    mixed, lam = model.mix(x, plan)
    want_mixed, kernel, openmixup_lam = openmixup_smoothmix(x, plan.perm, col, row, u)
    torch.testing.assert_close(smooth_mask(plan.draws, plan.width, side, side), kernel, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mixed, want_mixed, rtol=1e-6, atol=1e-6)
    # The one documented difference: the unpermuted labels get the share of their own pixels.
    torch.testing.assert_close(lam, 1.0 - openmixup_lam.squeeze(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("h,w", [(15, 15), (12, 20), (9, 14)])
def test_smoothmix_mask_is_the_gaussian_of_its_definition_at_any_size(h, w):
    """Odd and non-square sizes (which OpenMixup's view(h, h) cannot take): the closed form,
    pixel by pixel."""
    draws, u = torch.tensor([h - 2, 1]), torch.tensor(0.3)
    mask = smooth_mask(draws, u, h, w)
    r0 = (h - 1) / 2 + math.trunc(draws[0].item() - h / 2)
    c0 = (w - 1) / 2 + math.trunc(draws[1].item() - w / 2)
    sigma = (0.3 / 4 + 0.25) * h
    for r in range(h):
        for c in range(w):
            want = math.exp(-((r - r0) ** 2 + (c - c0) ** 2) / (2 * sigma ** 2))
            assert mask[r, c].item() == pytest.approx(want, rel=1e-5)
    assert mask.shape == (h, w) and mask.max() <= 1.0 and mask.min() > 0


def test_smoothmix_loss_weights_the_labels_by_the_pixels_they_own():
    torch.manual_seed(0)
    model = SmoothMix("tiny", K, cifar_stem=True)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, K, (6,))
    plan = _plan(6, 3, 12, 0.7)
    out = model.step_losses(x, y, plan)
    kernel = smooth_mask(plan.draws, plan.width, 16, 16)
    lam = 1.0 - kernel.mean()
    z = model.logits(x * (1 - kernel) + x[plan.perm] * kernel, plan)
    torch.testing.assert_close(out["loss"], pair_mixed_cross_entropy(z, y, plan.perm, lam), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["lam"], lam, rtol=1e-6, atol=1e-7)
    masks = model.mix_masks(x, plan)
    torch.testing.assert_close(masks[0], 1.0 - kernel)


def test_smoothmix_plans_are_reproducible_and_in_range():
    cfg = resolve(dict(arch="tiny", method="smoothmix", batch_size=8, amp=False))
    model = build_model(cfg, K, True)
    a = model.sample_plan(8, torch.Generator().manual_seed(3), image_size=(16, 20))
    b = model.sample_plan(8, torch.Generator().manual_seed(3), image_size=(16, 20))
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)
    assert sorted(a.perm.tolist()) == list(range(8))
    draws = torch.stack([model.sample_plan(4, torch.Generator().manual_seed(s), image_size=(16, 20)).draws
                         for s in range(200)])
    assert 0 <= draws[:, 0].min() and draws[:, 0].max() == 15 and draws[:, 1].max() == 19
    with pytest.raises(ValueError, match="image_size"):
        model.sample_plan(4)


def test_smoothmix_draws_no_beta_lambda():
    cfg = resolve(dict(arch="tiny", method="smoothmix", amp=False))
    assert not SmoothMix.uses_mix_alpha
    assert "Gaussian" in SmoothMix.describe(cfg, 32)


def test_smoothmix_runs_through_compare(tmp_path):
    argv = ["--methods", "smoothmix", "--output", str(tmp_path), "--name", "c", "--arch", "tiny",
            "--img-size", "16", "--epochs", "1", "--batch-size", "200", "--workers", "0", "--no-amp"]
    assert compare.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "c" / "comparison.csv")))
    assert [r["method"] for r in rows] == ["smoothmix"] and 0 <= float(rows[0]["headline_top1"]) <= 100
