"""MixUp (Zhang et al. 2018): x = lam * x + (1 - lam) * x[perm], lam ~ Beta(a, a), one lambda per
batch (OpenMixup ``augments/mixup.py``).

The mixing is written out here rather than calling torchvision.transforms.v2.MixUp or
timm.data.Mixup: both draw lambda on the host (a Python float from torch.distributions or NumPy)
and fix the partner (the batch rolled or flipped), so inside the fused step they would read the
device (a sync) or break the graph. Tests hold this function to both libraries given the same
lambda and partner.
"""

from __future__ import annotations

import torch

from .pairmix import PairMix, PairPlan, pair_defaults


def mixup(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """lam * x + (1 - lam) * x[perm], in x's dtype and memory format."""
    return lam.to(x.dtype) * x + (1.0 - lam).to(x.dtype) * x[perm]


class MixUp(PairMix):
    name = "mixup"
    title = "MixUp"
    summary = "lam x + (1 - lam) x[perm], one lambda per batch"
    rank = 3
    defaults = pair_defaults(cifar=1.0, cifar_transformer=0.8, imagenet=0.2, fine_grained=1.0)

    def mix(self, x: torch.Tensor, plan: PairPlan) -> tuple[torch.Tensor, torch.Tensor]:
        return mixup(x, plan.lam, plan.perm), plan.lam
