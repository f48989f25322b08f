"""GridMix (Baek et al., Pattern Recognition 2021): a grid of square holes over a random crop
shows the partner image; lambda from the holes' area.

Definition, as OpenMixup's ``augments/gridmix.py`` with its published arguments: per batch,
lambda ~ Beta(a, a), a hole count n uniform in {2..6} (``--grid-min-holes``/``--grid-max-holes``),
a crop area ratio A ~ U(0.5, 1) and aspect ratio R ~ U(0.5, 2), a corner (u, v) ~ U(0, 1)^2. The
crop is cut_w = int(sqrt(int(H W A) / R)) wide and cut_h = int(cut_w R) tall, its top-left
corner at (int((H - cut_h) v), int((W - cut_w) u)). It is tiled by square patches of side
p = ceil(cut_w / n); in the top-left corner of each patch a hole of side
clamp(int(p sqrt(1 - lambda)), 1, p - 1) takes the partner's pixels (hole aspect ratio 1). The
label weight of the unpermuted image is 1 - hole area / image area; the partner permutation is a
plain random one.

Differences from OpenMixup, both where it cannot run or runs by accident:

* OpenMixup asserts n <= cut_w // 2, which fails for crops under 12 px (16-px digits); here n is
  capped at cut_w // 2 (at least 1), the same draw wherever OpenMixup runs.
* Its crop can be taller or wider than the image (A R > 1); it then slices the mask with a
  negative start, which Python reads from the far border, so such holes vanish or wrap to the
  opposite edge. Here the crop is clipped at the border, like CutMix's box.
* It names the image's rows W and its columns H, which only matters for non-square images; the
  definition above uses the rows for the crop's height.

Hand-written: no maintained library provides GridMix. The mask is built from comparisons on the
device (patch index arithmetic, no Python loop over holes), so it stays inside the fused step's
graph with no host sync.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..errors import UsageError
from .base import random_permutation, uniform_int
from .options import Option
from .pairmix import PairMix, pair_defaults

AREA_RATIO = (0.5, 1.0)      # OpenMixup's cut_area_ratio
ASPECT_RATIO = (0.5, 2.0)    # OpenMixup's cut_aspect_ratio


class GridPlan(NamedTuple):
    """lam: 0-dim fp32; perm: int64 [B]; holes: int64 0-dim, the drawn hole count; shape: fp64
    [2], the crop's (area ratio A, aspect ratio R); corner: fp64 [2], (u, v) in [0, 1)."""

    lam: torch.Tensor
    perm: torch.Tensor
    holes: torch.Tensor
    shape: torch.Tensor
    corner: torch.Tensor


def grid_mask(lam: torch.Tensor, holes: torch.Tensor, shape: torch.Tensor, corner: torch.Tensor,
              height: int, width: int) -> torch.Tensor:
    """fp32 [H, W] of 0/1: 1 on the holes (the partner's pixels). Integer conversions truncate
    like Python's int() in float64, so the same draws give OpenMixup's crop and holes."""
    device = lam.device
    area_ratio, aspect = shape[0], shape[1]
    cut_area = torch.floor(area_ratio * (height * width))
    cut_w = torch.floor(torch.sqrt(cut_area / aspect))
    cut_h = torch.floor(cut_w * aspect)
    col0 = torch.trunc((width - cut_w) * corner[0])
    row0 = torch.trunc((height - cut_h) * corner[1])
    n = torch.clamp(torch.minimum(holes.double(), torch.floor(cut_w / 2)), min=1)
    patch = torch.ceil(cut_w / n)
    ratio = torch.sqrt(1.0 - lam.double())
    hole = torch.clamp(torch.floor(patch * ratio), min=1)
    hole = torch.minimum(hole, patch - 1)
    v = torch.arange(height, device=device, dtype=torch.float64) - row0      # row inside the crop
    u = torch.arange(width, device=device, dtype=torch.float64) - col0       # column inside the crop
    in_rows = (v >= 0) & (v < cut_h) & (torch.remainder(v, patch) < hole)
    in_cols = (u >= 0) & (u < cut_w) & (torch.remainder(u, patch) < hole)
    return (in_rows[:, None] & in_cols[None, :]).to(torch.float32)


class GridMix(PairMix):
    name = "gridmix"
    title = "GridMix"
    summary = "a grid of square holes over a random crop shows the partner; lambda from the holes"
    rank = 11
    # OpenMixup's GridMix rows: Beta(0.2) for ResNets on CIFAR, Tiny-ImageNet and ImageNet, 1 for
    # the CIFAR-100 transformer/ConvNeXt configs; no fine-grained row exists, so the small-data
    # cutting value (as CutMix and FMix use there).
    defaults = pair_defaults(cifar=0.2, cifar_transformer=1.0, imagenet=0.2, fine_grained=0.2)
    options = (
        Option("grid_min_holes", int, 2, low=1, help="fewest holes across the crop (one count drawn per step)"),
        Option("grid_max_holes", int, 6, low=1, help="most holes across the crop (one count drawn per step)"),
    )

    @classmethod
    def check_config(cls, cfg, image_side: int) -> None:
        if cfg.grid_min_holes > cfg.grid_max_holes:
            raise UsageError(f"--grid-min-holes ({cfg.grid_min_holes}) must not exceed --grid-max-holes "
                             f"({cfg.grid_max_holes})")

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        return f"Beta({cfg.mix_alpha:g}), {cfg.grid_min_holes}-{cfg.grid_max_holes} holes"

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, grid_min_holes: int = 2,
                 grid_max_holes: int = 6, **kwargs):
        super().__init__(arch, num_classes, cifar_stem=cifar_stem, **kwargs)
        self.hole_range = (int(grid_min_holes), int(grid_max_holes))

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> GridPlan:
        self.pixels(image_size)
        dev = self.device
        lam = self.sample_lam(generator)
        low, high = self.hole_range
        holes = low + uniform_int(high - low + 1, generator, dev)
        unit = torch.rand(4, generator=generator, device=dev, dtype=torch.float64)
        lows = torch.tensor([AREA_RATIO[0], ASPECT_RATIO[0]], dtype=torch.float64, device=dev)
        spans = torch.tensor([AREA_RATIO[1] - AREA_RATIO[0], ASPECT_RATIO[1] - ASPECT_RATIO[0]],
                             dtype=torch.float64, device=dev)
        perm = random_permutation(batch_size, generator, dev)
        return GridPlan(lam, perm, holes, lows + spans * unit[:2], unit[2:])

    def mask(self, x: torch.Tensor, plan: GridPlan) -> torch.Tensor:
        return grid_mask(plan.lam, plan.holes, plan.shape, plan.corner, *x.shape[-2:])

    def mix(self, x: torch.Tensor, plan: GridPlan) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask(x, plan)
        h, w = x.shape[-2:]
        weight = m.to(x.dtype)
        return x * (1 - weight) + x[plan.perm] * weight, 1.0 - m.sum() / (h * w)

    def mix_masks(self, x: torch.Tensor, plan: GridPlan) -> torch.Tensor:
        return (1.0 - self.mask(x, plan))[None]


__all__ = ["GridMix", "GridPlan", "grid_mask"]
