"""GridMix: its mask against OpenMixup's hole loop given the same draws, the two documented
departures (the capped hole count, the clipped crop), its plan and options, both steps through
the CLI, and a comparison run."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from adautomix_fast import compare
from adautomix_fast.config import resolve
from adautomix_fast.methods.base import pair_mixed_cross_entropy
from adautomix_fast.methods.gridmix import GridMix, GridPlan, grid_mask
from adautomix_fast.registry import build_model
from adautomix_fast.train import main

K = 7
TINY = ["--arch", "tiny", "--img-size", "16", "--workers", "0", "--batch-size", "200", "--no-amp"]


def openmixup_grid(lam, n_holes, area_ratio, aspect, cx, cy, side, pad=0):
    """OpenMixup's rand_grid for given draws on a square image of ``side`` px: the crop from the
    area and aspect ratios, patches of ceil(crop width / holes), one hole per patch at its
    top-left corner, each written by slicing. ``pad`` > 0 draws on a canvas padded by ``pad`` on
    every side and crops it back, so no slice starts below 0 (the clipped crop); pad 0 is
    OpenMixup's own slicing, negative starts included."""
    cut_area = int(side * side * area_ratio)
    cut_w = int(np.sqrt(cut_area / aspect))
    cut_h = int(cut_w * aspect)
    xc1, yc1 = int((side - cut_w) * cx), int((side - cut_h) * cy)
    assert 1 <= n_holes <= cut_w // 2, "OpenMixup's own precondition"
    patch_w = math.ceil(cut_w / n_holes)
    patch_h = int(patch_w * 1.0)
    ny = math.ceil(cut_h / patch_h)
    ratio = np.sqrt(1 - lam)
    hole_w = min(max(int(patch_w * ratio), 1), patch_w - 1)
    hole_h = min(max(int(patch_h * ratio), 1), patch_h - 1)
    mask = torch.zeros(side + 2 * pad, side + 2 * pad)
    for i in range(n_holes + 1):
        for j in range(ny + 1):
            x1, y1 = min(patch_w * i, cut_w), min(patch_h * j, cut_h)
            x2, y2 = min(x1 + hole_w, cut_w), min(y1 + hole_h, cut_h)
            mask[pad + yc1 + y1:pad + yc1 + y2, pad + xc1 + x1:pad + xc1 + x2] = 1.0
    fits = cut_w <= side and cut_h <= side
    return mask[pad:pad + side, pad:pad + side], fits, cut_w


def numpy_draws(seed, alpha=0.2):
    """One set of OpenMixup's draws (lam, holes, area ratio, aspect ratio, cx, cy); lam rounded
    to fp32, the precision the plan carries."""
    rng = np.random.RandomState(seed)
    lam = float(np.float32(rng.beta(alpha, alpha)))
    return (lam, int(rng.randint(2, 7)), rng.uniform(0.5, 1), rng.uniform(0.5, 2), rng.random_sample(),
            rng.random_sample())


def _plan(b, lam, holes, area, aspect, cx, cy, seed=0):
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(seed))
    return GridPlan(torch.tensor(lam, dtype=torch.float32), perm, torch.tensor(holes),
                    torch.tensor([area, aspect], dtype=torch.float64), torch.tensor([cx, cy], dtype=torch.float64))


def _mask(draws, side):
    lam, holes, area, aspect, cx, cy = draws
    plan = _plan(1, lam, holes, area, aspect, cx, cy)
    return grid_mask(plan.lam, plan.holes, plan.shape, plan.corner, side, side)


@pytest.mark.parametrize("side", [32, 64])
def test_gridmix_equals_openmixup_given_the_same_draws(side):
    compared = 0
    for seed in range(60):
        draws = numpy_draws(seed)
        want, fits, _ = openmixup_grid(*draws, side=side)
        if not fits:
            continue
        torch.testing.assert_close(_mask(draws, side), want, rtol=0, atol=0, msg=lambda m: f"seed {seed}: {m}")
        compared += 1
    assert compared >= 20
    for lam in (0.0, 1.0):      # the hole side's clamp to [1, patch - 1] at both ends
        draws = (lam, 3, 0.8, 1.0, 0.5, 0.5)
        torch.testing.assert_close(_mask(draws, side), openmixup_grid(*draws, side=side)[0], rtol=0, atol=0)


def test_gridmix_mixes_images_and_weights_labels_as_openmixup():
    torch.manual_seed(0)
    model = GridMix("tiny", K, cifar_stem=True)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, K, (6,))
    draws = (0.36, 4, 0.8, 0.9, 0.25, 0.6)
    plan = _plan(6, *draws)
    want, fits, _ = openmixup_grid(*draws, side=32)
    assert fits and 0 < want.mean() < 1
    mixed, lam = model.mix(x, plan)
    torch.testing.assert_close(mixed, x * (1 - want) + x[plan.perm] * want)
    torch.testing.assert_close(lam, 1 - want.sum() / (32 * 32))           # OpenMixup's lam
    out = model.step_losses(x, y, plan)
    z = model.logits(mixed, plan)
    torch.testing.assert_close(out["loss"], pair_mixed_cross_entropy(z, y, plan.perm, lam), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.mix_masks(x, plan)[0], 1 - want)


def test_a_crop_larger_than_the_image_is_clipped_where_openmixup_wraps():
    """Area x aspect > 1 makes the crop taller than the image: its holes are those of the same
    grid drawn on a padded canvas, cut back to the image (OpenMixup's negative slice starts read
    from the far border instead)."""
    side, oversize, differs = 32, 0, 0
    for seed in range(80):
        draws = numpy_draws(seed)
        clipped, fits, _ = openmixup_grid(*draws, side=side, pad=side)
        if fits:
            continue
        oversize += 1
        torch.testing.assert_close(_mask(draws, side), clipped, rtol=0, atol=0, msg=lambda m: f"seed {seed}: {m}")
        differs += int(not torch.equal(openmixup_grid(*draws, side=side)[0], clipped))
    assert oversize >= 10 and differs >= 1


def test_small_crops_cap_the_hole_count_at_half_the_crop_width():
    """At 16 px OpenMixup's assert fails for 5 or 6 holes in crops under 12 px wide; here the count
    becomes crop width // 2, the grid OpenMixup draws for that count."""
    capped = 0
    for seed in range(60):
        lam, holes, area, aspect, cx, cy = numpy_draws(seed)
        _, _, cut_w = openmixup_grid(lam, 1, area, aspect, cx, cy, side=16)
        n = min(holes, cut_w // 2)
        capped += int(n < holes)
        want, _, _ = openmixup_grid(lam, n, area, aspect, cx, cy, side=16, pad=16)
        torch.testing.assert_close(_mask((lam, holes, area, aspect, cx, cy), 16), want, rtol=0, atol=0)
    assert capped >= 1


def test_gridmix_plans_are_reproducible_and_in_range():
    cfg = resolve(dict(arch="tiny", method="gridmix", batch_size=8, amp=False, grid_min_holes=3, grid_max_holes=5))
    model = build_model(cfg, K, True)
    a = model.sample_plan(8, torch.Generator().manual_seed(3), image_size=(16, 16))
    b = model.sample_plan(8, torch.Generator().manual_seed(3), image_size=(16, 16))
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)
    assert sorted(a.perm.tolist()) == list(range(8))
    plans = [model.sample_plan(4, torch.Generator().manual_seed(s), image_size=(16, 16)) for s in range(200)]
    holes = torch.stack([p.holes for p in plans])
    shape = torch.stack([p.shape for p in plans])
    assert set(holes.tolist()) == {3, 4, 5}
    assert 0.5 <= shape[:, 0].min() and shape[:, 0].max() < 1.0
    assert 0.5 <= shape[:, 1].min() and shape[:, 1].max() < 2.0
    with pytest.raises(ValueError, match="image_size"):
        model.sample_plan(4)


def test_gridmix_published_defaults():
    assert resolve({"method": "gridmix"}, "cifar100-r18-gridmix").mix_alpha == 0.2
    cfg = resolve({"method": "gridmix", "arch": "tiny"})
    assert (cfg.grid_min_holes, cfg.grid_max_holes) == (2, 6)
    assert "2-6 holes" in GridMix.describe(cfg, 32)


def test_gridmix_hole_flags_are_checked_in_one_line(tmp_path, capsys):
    assert main(TINY + ["--method", "gridmix", "--grid-min-holes", "5", "--grid-max-holes", "3",
                        "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--grid-min-holes (5) must not exceed --grid-max-holes (3)" in err and len(err.strip().splitlines()) == 1
    assert main(TINY + ["--method", "mixup", "--grid-max-holes", "4", "--output", str(tmp_path)]) == 2
    assert "applies to gridmix only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_gridmix_runs_through_compare(tmp_path):
    argv = ["--methods", "gridmix", "--output", str(tmp_path), "--name", "c"] + TINY + ["--epochs", "1"]
    assert compare.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "c" / "comparison.csv")))
    assert [r["method"] for r in rows] == ["gridmix"] and 0 <= float(rows[0]["headline_top1"]) <= 100
