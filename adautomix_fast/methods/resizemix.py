"""ResizeMix (Qin et al. 2020): paste the whole partner image, shrunk, into a box.

As OpenMixup's ``augments/resizemix.py`` (scope (0.1, 0.8), use_alpha): tau ~ Beta(a, a), redrawn
from Uniform(0.1, 0.8) when outside that range; a box of sides int(H tau) x int(W tau) around a
uniform centre, clipped at the border (as CutMix's); the partner image resized to the clipped box
with nearest-neighbour interpolation and pasted; lambda = 1 - box area / image area (the label
weight of the image pasted into).

Hand-written: no library mixes this way. The resize into a box whose size lives on the device is
written as a gather with torch's own nearest-neighbour index rule (source index =
min(floor(dst * (in / out)), in - 1), in fp32 as F.interpolate computes it), so the shapes stay
static and nothing is read to the host; tests compare it with F.interpolate on the same box.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .base import random_permutation, sample_beta, uniform_int
from .cutmix import box_from_ratio, box_lambda, box_mask
from .pairmix import PairMix, pair_defaults

SCOPE = (0.1, 0.8)


class ResizePlan(NamedTuple):
    """tau: 0-dim fp32 side ratio of the pasted image; perm: int64 [B]; center: int64 [2]."""

    tau: torch.Tensor
    perm: torch.Tensor
    center: torch.Tensor


def nearest_source_index(dst: torch.Tensor, start: torch.Tensor, out_size: torch.Tensor, in_size: int) -> torch.Tensor:
    """Source index of each destination index for a nearest resize of ``in_size`` to ``out_size``
    placed at ``start``: torch's rule min(floor((dst - start) * (in / out)), in - 1), in fp32."""
    scale = (torch.tensor(float(in_size), dtype=torch.float32, device=dst.device)
             / out_size.clamp(min=1).to(torch.float32))
    local = (dst - start).clamp(min=0).to(torch.float32)
    return torch.clamp(torch.floor(local * scale).long(), max=in_size - 1)


def resize_paste(x: torch.Tensor, perm: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """x with all of x[perm] resized (nearest) into ``box`` = (y1, y2, x1, x2)."""
    h, w = x.shape[-2:]
    rows = nearest_source_index(torch.arange(h, device=x.device), box[0], box[1] - box[0], h)
    cols = nearest_source_index(torch.arange(w, device=x.device), box[2], box[3] - box[2], w)
    partner = x[perm]
    resized = partner.index_select(-2, rows).index_select(-1, cols)
    return torch.where(box_mask(box, h, w, x.device), resized, x)


class ResizeMix(PairMix):
    name = "resizemix"
    title = "ResizeMix"
    summary = "the whole partner image, shrunk, pasted into a box"
    rank = 7
    defaults = pair_defaults(cifar=1.0, cifar_transformer=1.0, imagenet=1.0, fine_grained=1.0)

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> ResizePlan:
        h, w = self.pixels(image_size)
        perm = random_permutation(batch_size, generator, self.device)
        tau = sample_beta(self.mix_alpha, (), generator, self.device)
        redraw = SCOPE[0] + (SCOPE[1] - SCOPE[0]) * torch.rand((), generator=generator, device=self.device)
        tau = torch.where((tau < SCOPE[0]) | (tau > SCOPE[1]), redraw, tau)
        center = torch.stack([uniform_int(h, generator, self.device), uniform_int(w, generator, self.device)])
        return ResizePlan(tau, perm, center)

    def box(self, x: torch.Tensor, plan: ResizePlan) -> torch.Tensor:
        return box_from_ratio(plan.tau, plan.center, *x.shape[-2:])

    def mix(self, x: torch.Tensor, plan: ResizePlan) -> tuple[torch.Tensor, torch.Tensor]:
        box = self.box(x, plan)
        return resize_paste(x, plan.perm, box), box_lambda(box, *x.shape[-2:])

    def mix_masks(self, x: torch.Tensor, plan: ResizePlan) -> torch.Tensor:
        return (~box_mask(self.box(x, plan), *x.shape[-2:], x.device))[None].float()


__all__ = ["ResizeMix", "ResizePlan", "resize_paste", "nearest_source_index"]
