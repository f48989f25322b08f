"""SmoothMix (Lee et al., CVPRW 2020): the partner image blended in under a Gaussian blob.

Definition, as OpenMixup's ``augments/smoothmix.py`` computes it: one mask for the batch,
G[r, c] = exp(-((r - r0)^2 + (c - c0)^2) / (2 sigma^2)) with centre
r0 = (H - 1) / 2 + trunc(i - H / 2), c0 = (W - 1) / 2 + trunc(j - W / 2) for i, j uniform integers
in [0, H) and [0, W), and width sigma = (u / 4 + 1/4) H for u uniform in [0, 1); the mixed image is
x (1 - G) + x[perm] G with a plain random permutation (no fixed-point redraw). No Beta lambda is
drawn: the label weight follows the mask's area.

OpenMixup builds G by rolling a 2H x 2H coordinate grid and cropping its centre; for the even,
square images it accepts that crop never wraps, so it is the closed form above (which also serves
odd and non-square sizes, where OpenMixup's ``view(h, h)`` fails). Its benchmark tables list
"alpha 0.2" for SmoothMix, but the function overwrites the drawn lambda, so no concentration
reaches the mask: ``--mix-alpha`` does not apply here.

Difference from OpenMixup: it gives mean(G), the share of the *partner* image, to the unpermuted
labels (``lam = sum(kernel) / (h w)`` returned as the weight of ``y_a``), the reverse of the
SmoothMix paper's definition (lambda = mean(G) weights the label of the image under G). Here the
unpermuted labels get 1 - mean(G), so labels follow pixels as in CutMix; given the same draws the
mixed images are OpenMixup's and the label weight is one minus its lambda.

Hand-written: no maintained library provides SmoothMix (timm and torchvision have MixUp and CutMix
only); the mask is a closed-form device computation, so the fused step keeps it in its graph.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .base import random_permutation, uniform_int
from .pairmix import PairMix, pair_defaults


class SmoothPlan(NamedTuple):
    """perm: int64 [B]; draws: int64 [2], the uniform integers (i in [0, H), j in [0, W)) that
    place the centre; width: fp32 0-dim, the uniform u in [0, 1) that sets sigma."""

    perm: torch.Tensor
    draws: torch.Tensor
    width: torch.Tensor


def smooth_mask(draws: torch.Tensor, width: torch.Tensor, height: int, width_px: int) -> torch.Tensor:
    """fp32 [H, W]: the Gaussian blob G of the module docstring (the partner image's weight).

    Offsets are integer or half-integer, so the squared distances are exact in fp32 and the
    arithmetic is OpenMixup's, operation for operation."""
    device = draws.device
    shift_r = torch.trunc(draws[0].double() - height / 2).long()
    shift_c = torch.trunc(draws[1].double() - width_px / 2).long()
    rows = (torch.arange(height, device=device) - shift_r).float() - (height - 1) / 2
    cols = (torch.arange(width_px, device=device) - shift_c).float() - (width_px - 1) / 2
    sigma = (width / 4 + 0.25) * height
    squared = rows[:, None] ** 2 + cols[None, :] ** 2
    return torch.exp(-squared / (2 * sigma ** 2))


class SmoothMix(PairMix):
    name = "smoothmix"
    title = "SmoothMix"
    summary = "the partner image blended in under a Gaussian blob; lambda from the blob's area"
    rank = 10
    # OpenMixup's SmoothMix rows (CIFAR, Tiny-ImageNet, ViTs on CIFAR-100) draw no lambda that
    # reaches the mask, so only the small-image families' cosine to lr 0 remains.
    defaults = pair_defaults(cifar=None, cifar_transformer=None, imagenet=None, fine_grained=None)
    uses_mix_alpha = False

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        return f"Gaussian blob, sigma {image_side / 4:g}-{image_side / 2:g} px"

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> SmoothPlan:
        h, w = self.pixels(image_size)
        perm = random_permutation(batch_size, generator, self.device)
        # OpenMixup draws the column offset first, then the row offset, then the width.
        col = uniform_int(w, generator, self.device)
        row = uniform_int(h, generator, self.device)
        width = torch.rand((), generator=generator, device=self.device)
        return SmoothPlan(perm, torch.stack([row, col]), width)

    def mask(self, x: torch.Tensor, plan: SmoothPlan) -> torch.Tensor:
        return smooth_mask(plan.draws, plan.width, *x.shape[-2:])

    def mix(self, x: torch.Tensor, plan: SmoothPlan) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.mask(x, plan)
        weight = g.to(x.dtype)
        h, w = x.shape[-2:]
        return x * (1 - weight) + x[plan.perm] * weight, 1.0 - g.sum() / (h * w)

    def mix_masks(self, x: torch.Tensor, plan: SmoothPlan) -> torch.Tensor:
        return (1.0 - self.mask(x, plan))[None]


__all__ = ["SmoothMix", "SmoothPlan", "smooth_mask"]
