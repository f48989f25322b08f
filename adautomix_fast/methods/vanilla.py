"""Vanilla training: cross-entropy on the clean batch (the paper's "Vanilla" row), in the same
engine as every mixing method (same data, schedule, evaluation, logs and speed)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .base import cross_entropy
from .pairmix import PairMix, pair_defaults


class VanillaPlan(NamedTuple):
    """Nothing is random in a vanilla step."""


class Vanilla(PairMix):
    name = "vanilla"
    title = "Vanilla"
    summary = "cross-entropy on the clean batch"
    rank = 2
    defaults = pair_defaults(cifar=None, cifar_transformer=None, imagenet=None, fine_grained=None)
    uses_mix_alpha = False

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> VanillaPlan:
        return VanillaPlan()

    def mix(self, x: torch.Tensor, plan) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.ones((), device=x.device)

    def step_losses(self, x: torch.Tensor, y: torch.Tensor, plan) -> dict[str, torch.Tensor]:
        return {"loss": cross_entropy(self.logits(x, plan), y, self.label_smoothing)}

    @torch.no_grad()
    def visualize(self, x: torch.Tensor, y: torch.Tensor, plan, count: int = 4) -> dict:
        k = min(count, x.shape[0])
        return {"sources": x[None, :k], "masks": None, "mixed": x[:k], "lam": torch.ones(1), "title": "vanilla"}
