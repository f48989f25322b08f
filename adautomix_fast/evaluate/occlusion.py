"""The ``occlusion`` suite: top-1 when a fraction of image patches is blanked (Fig. 5, Table 7).

Each image is cut into a grid of equal square patches; for each ratio r in 0, 0.1, ..., 0.9,
exactly round(r x cells) patches, chosen at random, are set to 0 in normalised space (the data
set's mean colour), and the chosen head's top-1 is measured.

The released tool hard-codes 224 px images with 16 px patches (a 14 x 14 grid) and draws one
unseeded patch set per batch. Here the grid is scaled to the image size (the patch is the
divisor of the image size closest to size / 14: 16 px at 224, 2 px at 32, so every patch has the
same area), every image gets its own patch set, and the sets come from a seeded generator per
ratio, drawn for all images at once: the result does not depend on the batch size.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import UsageError

RATIOS = tuple(round(0.1 * i, 1) for i in range(10))
RELEASED_GRID = 14   # 224 px / 16 px


def patch_size(image_size: int, requested: Optional[int] = None) -> int:
    """Side of a patch in pixels: ``requested`` (must divide the image size), else the divisor of
    the image size closest to image_size / 14 (the smaller one on a tie)."""
    if requested is not None:
        if requested < 1 or image_size % requested:
            raise UsageError(f"--occlusion-patch {requested} does not divide the image size {image_size}; "
                             f"choose a divisor of {image_size}")
        return requested
    target = image_size / RELEASED_GRID
    divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def masked_count(ratio: float, cells: int) -> int:
    """round(ratio x cells), halves rounded up."""
    return int(math.floor(ratio * cells + 0.5))


def patch_masks(num_images: int, cells: int, ratio: float, seed: int) -> torch.Tensor:
    """bool [num_images, cells]: exactly ``masked_count(ratio, cells)`` True per row, a uniformly
    random subset per image, a function of (seed, ratio) only."""
    k = masked_count(ratio, cells)
    generator = torch.Generator().manual_seed(seed * 1000 + int(round(ratio * 100)))
    order = torch.rand(num_images, cells, generator=generator).argsort(dim=1)
    mask = torch.zeros(num_images, cells, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask


def occlude(x: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero the masked patches of normalised images x [B,C,H,W]; mask: bool [B, (H/p)*(W/p)]
    in row-major patch order."""
    b, _, h, w = x.shape
    grid = mask.view(b, 1, h // patch, w // patch).to(x.device)
    pixels = grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return x.masked_fill(pixels, 0.0)


@torch.no_grad()
def run(ctx) -> dict:
    """Top-1 (%) of the chosen head at every occlusion ratio."""
    size = ctx.info.image_size
    patch = patch_size(size, ctx.options.occlusion_patch)
    grid = size // patch
    cells = grid * grid
    masks = [patch_masks(ctx.num_images, cells, r, ctx.options.seed) for r in RATIOS]
    correct = [0] * len(RATIOS)
    n = 0
    for start, x, y in ctx.batches("occlusion"):
        for i, mask in enumerate(masks):
            xo = occlude(x, mask[start:start + len(y)], patch)
            correct[i] += int(ctx.logits(xo).argmax(1).eq(y).sum())
        n += len(y)
    return {"ratios": list(RATIOS), "top1": [100.0 * c / max(n, 1) for c in correct],
            "masked_patches": [masked_count(r, cells) for r in RATIOS], "patch": patch, "grid": grid,
            "cells": cells, "fill": "0 in normalised space (the mean colour)", "seed": ctx.options.seed,
            "images": n}
