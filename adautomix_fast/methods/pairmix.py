"""The baselines' shared model: one classifier with one head, trained on a mix of each image with
a partner from a permutation of the batch (docs/methods.md, Common to the baselines).

A baseline is a subclass that draws its plan (``sample_plan``) and mixes (``mix``: a pure
function of images and plan, returning the mixed batch and the label weight lambda); the loss,
lambda * CE(z, y) + (1 - lambda) * CE(z, y[perm]) with optional label smoothing, the evaluation
head (``student_one``: OpenMixup's ``head0``), the step, checkpoints and pictures come from here.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

from ..models import build_classifier
from .base import MixModel, pair_mixed_cross_entropy, random_permutation, sample_beta


class PairPlan(NamedTuple):
    """MixUp's plan and the core of every pair method's: lam (0-dim fp32, the mixing ratio drawn
    from Beta(a, a)) and perm (int64 [B], sample b is mixed with sample perm[b])."""

    lam: torch.Tensor
    perm: torch.Tensor


def no_repeat_permutation(batch_size: int, generator: Optional[torch.Generator], device: torch.device,
                          tries: int = 10) -> torch.Tensor:
    """A random permutation redrawn (up to ``tries`` draws) until no sample is its own partner,
    as OpenMixup's CutMix and FMix do (``_no_repeat_shuffle_idx`` with ignore_failure: after the
    last draw it keeps that one). All draws are made and the first without a fixed point is
    selected on the device, so there is no host sync and no data-dependent control flow."""
    perms = torch.stack([random_permutation(batch_size, generator, device) for _ in range(tries)])   # [T,B]
    fixed = (perms == torch.arange(batch_size, device=device)).any(dim=1)                            # [T]
    ok = ~fixed
    ok[-1] = True                                  # the last draw is taken when every draw had one
    first = torch.argmax(ok.to(torch.int8))        # index of the first True
    # A gather, not perms[first]: indexing with a 0-dim tensor would read it on the host.
    return perms.gather(0, first.view(1, 1).expand(1, batch_size)).squeeze(0)


def pair_defaults(*, cifar: Optional[float], cifar_transformer: Optional[float], imagenet: Optional[float],
                  fine_grained: Optional[float]) -> dict[str, dict[str, Any]]:
    """A baseline's published defaults per data-set family: lambda's Beta concentration (None:
    the method draws no lambda) and, on the small-image families, the released baselines'
    cosine to lr 0 (AdAutoMix's CIFAR configs stop at 0.05)."""
    alphas = {"cifar": cifar, "cifar-transformer": cifar_transformer, "imagenet": imagenet,
              "fine-grained": fine_grained}
    out: dict[str, dict[str, Any]] = {}
    for family, alpha in alphas.items():
        values: dict[str, Any] = {} if alpha is None else {"mix_alpha": alpha}
        if family in ("cifar", "cifar-transformer"):
            values["min_lr"] = 0.0
        out[family] = values
    return out


class PairMix(MixModel):
    """One classifier (``student``, head ``head_one``) trained on pairwise mixes."""

    HEADS = ("student_one",)
    HEADLINE = "student_one"
    # The cutting methods' ImageNet rule (CutMix, SaliencyMix, FMix set it): the released
    # ResNet-18 and ResNet-34 configs draw lambda from Beta(0.2, 0.2) where deeper trunks use 1.
    small_imagenet_trunk_alpha: Optional[float] = None

    @classmethod
    def published_defaults(cls, family: str, arch: str) -> dict[str, Any]:
        values = super().published_defaults(family, arch)
        if cls.small_imagenet_trunk_alpha is not None and family == "imagenet" and arch in ("r18", "r34"):
            values["mix_alpha"] = cls.small_imagenet_trunk_alpha
        return values

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, mix_alpha: float = 1.0,
                 label_smoothing: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.mix_alpha = float(mix_alpha)
        self.label_smoothing = float(label_smoothing)
        # drop_path: the trunk's stochastic depth (Swin, ConvNeXt, DeiT recipes; 0 for ResNets).
        self.student = build_classifier(arch, num_classes, cifar_stem, drop_path=drop_path, mix_head=False)

    # ------------------------------------------------------------------ plan and mixing
    def sample_lam(self, generator: Optional[torch.Generator]) -> torch.Tensor:
        return sample_beta(self.mix_alpha, (), generator, self.device)

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> PairPlan:
        return PairPlan(self.sample_lam(generator), random_permutation(batch_size, generator, self.device))

    def mix(self, x: torch.Tensor, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, label weight lambda of the unpermuted labels)."""
        raise NotImplementedError

    def mix_masks(self, x: torch.Tensor, plan) -> Optional[torch.Tensor]:
        """The per-pixel weight of the unpermuted image [1 or B, H, W], for the pictures (None for
        methods that mix whole images with a scalar)."""
        return None

    # ------------------------------------------------------------------ losses
    def logits(self, x_mix: torch.Tensor, plan) -> torch.Tensor:
        return self.student.head_one(self.student.pooled(x_mix))

    def step_losses(self, x: torch.Tensor, y: torch.Tensor, plan) -> dict[str, torch.Tensor]:
        x_mix, lam = self.mix(x, plan)
        z = self.logits(x_mix, plan)
        loss = pair_mixed_cross_entropy(z, y, plan.perm, lam, self.label_smoothing)
        return {"loss": loss, "lam": lam.detach().float().mean()}

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def visualize(self, x: torch.Tensor, y: torch.Tensor, plan, count: int = 4) -> dict:
        k = min(count, x.shape[0])
        mixed, lam = self.mix(x, plan)
        masks = self.mix_masks(x, plan)
        if masks is not None:
            first = masks.expand(x.shape[0], *masks.shape[-2:])[:k].float()
            masks = torch.stack([first, 1.0 - first], dim=1)                       # [K,2,H,W]
        lam = lam.float()
        lam_rows = torch.stack([lam, 1.0 - lam], dim=-1)
        return {"sources": torch.stack([x[:k], x[plan.perm[:k]]]), "masks": masks, "mixed": mixed[:k],
                "lam": lam_rows if lam_rows.dim() == 1 else lam_rows[:k], "title": f"{self.name}"}


__all__ = ["PairMix", "PairPlan", "no_repeat_permutation", "pair_defaults"]
