"""Manifold Mixup (Verma et al. 2019): mix hidden states at a random depth.

As OpenMixup's ManifoldMix (``MixUpClassification._manifoldmix`` with a ``ResNet_Mix`` trunk):
lambda ~ Beta(a, a), one permutation, and a layer k drawn uniformly from {0, 1, 2}: k = 0 mixes
the input images, k = 1 the output of the first residual stage, k = 2 the output of the second
(lam h + (1 - lam) h[perm], one lambda for the batch); the loss is MixUp's.

Hand-written (no library hooks a trunk this way). The layer is a device tensor, so the trunk runs
its stages with a mixing point before stages 0, 2 and 3 (input, after stage 1, after stage 2; stage
0 is the stem) and each point keeps its mix only when it is the drawn one: no Python branch on a
value, one graph for every layer.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .base import pair_mixed_cross_entropy, random_permutation, uniform_int
from .mixup import mixup
from .pairmix import PairMix, pair_defaults

# Stage indices (Classifier.forward_stages) before which a hidden state may be mixed, for k = 0, 1,
# 2: each network's ``mix_points`` (a ResNet's: the input, after layer1, after layer2).
MIX_POINTS = (0, 2, 3)


class ManifoldPlan(NamedTuple):
    """lam: 0-dim fp32; perm: int64 [B]; layer: 0-dim int64 in {0, 1, 2}."""

    lam: torch.Tensor
    perm: torch.Tensor
    layer: torch.Tensor


def manifold_pooled(net, x: torch.Tensor, plan: ManifoldPlan) -> torch.Tensor:
    """Pooled features of ``net`` on x with the hidden state mixed before stage MIX_POINTS[layer]."""
    h = x
    start = 0
    for k, point in enumerate(net.mix_points):
        h = net.forward_stages(h, start, point)
        h = torch.where(plan.layer == k, mixup(h, plan.lam, plan.perm), h)
        start = point
    return net.pool(net.forward_stages(h, start))


class ManifoldMix(PairMix):
    name = "manifoldmix"
    title = "ManifoldMix"
    summary = "mixup of hidden states at a random stage boundary"
    rank = 5
    defaults = pair_defaults(cifar=2.0, cifar_transformer=2.0, imagenet=0.2, fine_grained=2.0)

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> ManifoldPlan:
        lam = self.sample_lam(generator)
        perm = random_permutation(batch_size, generator, self.device)
        return ManifoldPlan(lam, perm, uniform_int(len(MIX_POINTS), generator, self.device))

    def mix(self, x: torch.Tensor, plan: ManifoldPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """The input-level view (the pictures, and layer 0): mixing happens inside the trunk."""
        return torch.where(plan.layer == 0, mixup(x, plan.lam, plan.perm), x), plan.lam

    def logits(self, x_mix: torch.Tensor, plan: ManifoldPlan) -> torch.Tensor:
        return self.student.head_one(manifold_pooled(self.student, x_mix, plan))

    def step_losses(self, x: torch.Tensor, y: torch.Tensor, plan: ManifoldPlan) -> dict[str, torch.Tensor]:
        z = self.logits(x, plan)          # the trunk mixes at the drawn layer (layer 0: the input)
        loss = pair_mixed_cross_entropy(z, y, plan.perm, plan.lam, self.label_smoothing)
        return {"loss": loss, "lam": plan.lam.detach(), "layer": plan.layer.float()}


__all__ = ["ManifoldMix", "ManifoldPlan", "manifold_pooled", "MIX_POINTS"]
