"""CutMix (Yun et al. 2019): paste a box of the partner image; lambda recomputed from the box.

The box (OpenMixup ``augments/cutmix.py``, timm's ``rand_bbox``): sides int(H sqrt(1 - lam)) x
int(W sqrt(1 - lam)), centre (cy, cx) uniform over the image, corners centre -/+ half the side
(integer halves), clipped at the border; one box for the whole batch. The label weight of the
unpermuted image is then 1 - box area / image area. OpenMixup redraws the permutation to avoid
fixed points (up to 10 draws).

Written out rather than calling torchvision.transforms.v2.CutMix or timm.data.Mixup: both draw
lambda and the centre on the host and slice with Python integers, which inside the fused step
would read the device (a sync) or break the graph; here the box is a pair of device-side index
ranges turned into a mask. Tests hold this function to both libraries given the same draws.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .base import uniform_int
from .pairmix import PairMix, no_repeat_permutation, pair_defaults


class BoxPlan(NamedTuple):
    """lam: 0-dim fp32 drawn ratio (sets the box side); perm: int64 [B]; center: int64 [2] (row,
    column) of the box centre in pixels."""

    lam: torch.Tensor
    perm: torch.Tensor
    center: torch.Tensor


def box_from_ratio(ratio: torch.Tensor, center: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """int64 [4] = (y1, y2, x1, x2): sides int(H * ratio) x int(W * ratio) around ``center``,
    corners centre -/+ side // 2, clipped to the image. Computed in float64 like the libraries'
    Python/NumPy arithmetic, so the same ratio gives the same box."""
    r = ratio.double()
    cut_h = torch.floor(height * r).long()
    cut_w = torch.floor(width * r).long()
    cy, cx = center[0], center[1]
    y1 = torch.clamp(cy - cut_h // 2, 0, height)
    y2 = torch.clamp(cy + cut_h // 2, 0, height)
    x1 = torch.clamp(cx - cut_w // 2, 0, width)
    x2 = torch.clamp(cx + cut_w // 2, 0, width)
    return torch.stack([y1, y2, x1, x2])


def cutmix_box(lam: torch.Tensor, center: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The CutMix box of ratio sqrt(1 - lam) (see box_from_ratio)."""
    return box_from_ratio(torch.sqrt(1.0 - lam.double()), center, height, width)


def box_mask(box: torch.Tensor, height: int, width: int, device: torch.device) -> torch.Tensor:
    """bool [H, W]: True inside rows y1..y2-1 and columns x1..x2-1."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    inside_r = (rows >= box[0]) & (rows < box[1])
    inside_c = (cols >= box[2]) & (cols < box[3])
    return inside_r[:, None] & inside_c[None, :]


def box_lambda(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """1 - box area / image area, fp32 (the label weight of the image the box is pasted into)."""
    area = (box[1] - box[0]) * (box[3] - box[2])
    return (1.0 - area.double() / (height * width)).float()


def paste_box(x: torch.Tensor, perm: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """x with the box of x[perm] pasted in (a pure function; x is not modified)."""
    mask = box_mask(box, x.shape[-2], x.shape[-1], x.device)
    return torch.where(mask, x[perm], x)


class CutMix(PairMix):
    name = "cutmix"
    title = "CutMix"
    summary = "a box of the partner image pasted in; lambda from the box"
    rank = 4
    defaults = pair_defaults(cifar=0.2, cifar_transformer=2.0, imagenet=1.0, fine_grained=0.2)
    small_imagenet_trunk_alpha = 0.2

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> BoxPlan:
        lam = self.sample_lam(generator)
        perm = no_repeat_permutation(batch_size, generator, self.device)
        return BoxPlan(lam, perm, self.sample_center(image_size, generator))

    def sample_center(self, image_size: Optional[tuple[int, int]],
                      generator: Optional[torch.Generator]) -> torch.Tensor:
        """(row, column), each uniform over the image's pixels (row drawn first, as OpenMixup and
        timm do)."""
        h, w = self.pixels(image_size)
        return torch.stack([uniform_int(h, generator, self.device), uniform_int(w, generator, self.device)])

    def box(self, x: torch.Tensor, plan: BoxPlan) -> torch.Tensor:
        h, w = x.shape[-2:]
        return cutmix_box(plan.lam, plan.center, h, w)

    def mix(self, x: torch.Tensor, plan: BoxPlan) -> tuple[torch.Tensor, torch.Tensor]:
        box = self.box(x, plan)
        return paste_box(x, plan.perm, box), box_lambda(box, *x.shape[-2:])

    def mix_masks(self, x: torch.Tensor, plan: BoxPlan) -> torch.Tensor:
        return (~box_mask(self.box(x, plan), *x.shape[-2:], x.device))[None].float()


__all__ = ["CutMix", "BoxPlan", "cutmix_box", "box_from_ratio", "box_mask", "box_lambda", "paste_box"]
