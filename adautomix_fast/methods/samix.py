"""SAMix (Li et al., "Boosting Discriminative Visual Representation Learning with
Scenario-Agnostic Mixup", arXiv 2111.15454) as OpenMixup ships it: AutoMix's classifier with
SAMix's mix block, in the engine's AutoMix machinery.

Source: github.com/Westlake-AI/openmixup at 37e1372446ab35c03fcf77302539bd4a5bee47eb,
``configs/classification/cifar100/samix/basic/r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2.py``
(CIFAR-100, ResNet-18, 400 epochs), ``openmixup/models/classifiers/automix.py`` and
``openmixup/models/heads/pmix_block.py`` (``PixelMixBlock`` with the SAMix options). What differs
from AutoMix:

* lambda encoding: lambda' = (4/3 l^3 - 2 l^2 + (k+1) l) / (k + 1/3) (k = 0.25 on CIFAR), and the
  stage-3 features scaled residually: the image's by (1 + lambda'), its partner's by
  (1 + (1 - lambda'));
* queries and keys: two separate 1x1 projections (C -> C/2, with bias) of the concatenation of the
  two scaled maps, scale 1/sqrt(C/2), softmax over positions;
* value: a two-layer network of the partner's scaled features, 1x1 conv (C -> C/2, no bias),
  BatchNorm, ELU, 1x1 conv (C/2 -> 1, no bias);
* the partner's mask sigmoid(upsample(P v)) with bilinear upsampling;
* the mask loss max(|1 - mean(m) - lambda| - 0.1, 0) - 2 mean((m - mean(m))^2) on the partner's
  mask m (means over the batch and every pixel), weight 0.1, constant; Beta(2, 2), margin 0.08.

The mix block's head in OpenMixup is a soft cross-entropy with ``neg_weight`` 0.5; with soft labels
its weight only multiplies classes whose target is 0, so the loss is the mixed cross-entropy the
engine's AutoMix computes (docs/methods.md, SAMix). Not implemented: ``mask_adjust`` (0 in the
400-epoch config used here; the 800-epoch one sets 0.25).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .automix import AutoMix, PixelMixBlock
from .options import FAMILIES, Option


def rescale_lambda(lam: torch.Tensor, k: float) -> torch.Tensor:
    """SAMix's lambda encoding (OpenMixup ``rescale_lam_mult``): 0 -> 0, 1/2 -> 1/2, 1 -> 1."""
    k = k + 1.0
    return (4.0 / 3.0 * lam ** 3 - 2.0 * lam ** 2 + k * lam) / (k - 2.0 / 3.0)


class SAMixBlock(PixelMixBlock):
    """SAMix's mix block for two slots: mask logits (0, z) (module docstring).

    Args:
        in_channels: stage-3 channels of the trunk.
        upsample: the masks' upsampling ("bilinear" in SAMix).
        lam_k: k of the lambda encoding.
        reduction: d = in_channels // reduction.
    """

    def __init__(self, in_channels: int, lam_concat: bool = False, norm: bool = False,
                 upsample: str = "bilinear", reduction: int = 2, lam_k: float = 0.25):
        nn.Module.__init__(self)
        if upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        self.in_channels, self.lam_concat, self.norm, self.upsample = in_channels, False, False, upsample
        self.lam_k = float(lam_k)
        self.kernels = "torch"
        self.dim = max(in_channels // reduction, 1)
        self.query = nn.Conv2d(2 * in_channels, self.dim, kernel_size=1, bias=True)
        self.key = nn.Conv2d(2 * in_channels, self.dim, kernel_size=1, bias=True)
        self.value = nn.Sequential(nn.Conv2d(in_channels, self.dim, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(self.dim), nn.ELU(),
                                   nn.Conv2d(self.dim, 1, kernel_size=1, bias=False))
        self.reset_parameters()               # OpenMixup init_weights('normal'): N(0, 0.01), bias 0

    def mask_logits(self, feats: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """[B, 2, h, w] fp32: (0, z), z the partner's mask logit; ``lam[0]`` is the image's ratio."""
        if index.shape[0] != 2:
            raise ValueError(f"SAMix's mix block mixes two images, got {index.shape[0]} slots")
        b, _, h, w = feats.shape
        scaled = rescale_lambda(lam[0].float(), self.lam_k).to(feats.dtype)
        own = feats[index[0]] * (1.0 + scaled)
        partner = feats[index[1]] * (1.0 + (1.0 - scaled))
        both = torch.cat([own, partner], dim=1)
        q = self.query(both).flatten(2).transpose(1, 2)               # [B,P,d]
        k = self.key(both).flatten(2).transpose(1, 2)                 # [B,P,d]
        v = self.value(partner).flatten(1)                            # [B,P]
        return self.partner_logits(q, k, v, (b, h, w))


def mask_l1_variance_loss(masks: torch.Tensor, lam: torch.Tensor, margin: float,
                          variance_weight: float = 2.0) -> torch.Tensor:
    """SAMix's mask loss (OpenMixup ``mask_loss``, mode "L1+Variance"): on the partner's mask m
    (slot 1), max(|1 - mean(m) - lambda| - margin, 0) - w * mean((m - mean(m))^2), the means over
    the batch and every pixel. masks: [B,2,H,W]; lam[0] is the image's ratio."""
    m = masks[:, 1].float()
    mean = m.mean()
    return torch.clamp(torch.abs(1.0 - mean - lam[0]) - margin, min=0.0) - variance_weight * ((m - mean) ** 2).mean()


class SAMix(AutoMix):
    """SAMix: AutoMix's classifier, EMA teacher and objective with SAMix's mix block and mask loss."""

    name = "samix"
    title = "SAMix"
    summary = "AutoMix with SAMix's lambda-encoded mix block and L1 + variance mask loss (OpenMixup)"
    rank = 20
    # OpenMixup's CIFAR-100 SAMix config on every family (no other published SAMix config is read):
    # Beta(2, 2), margin 0.08, bilinear masks, mask loss 0.1 constant (margin 0.1).
    defaults = {family: dict(mix_alpha=2.0, mix_samples=2, lam_margin=0.08, upsample="bilinear", gen_norm=False,
                             lam_concat=False, gen_objective="cooperative", loss_cos=False, mask_loss=0.1,
                             mask_loss_margin=0.1, mask_loss_schedule="constant")
                for family in FAMILIES}
    # SAMix's block has no lambda channel and no BatchNorm in its query/key projections.
    excluded_options = AutoMix.excluded_options + ("lam_concat", "gen_norm")
    options = (
        Option("samix_lam_k", float, 0.25, low=0, param="lam_k",
               help="k of SAMix's lambda encoding (the features scaled by 1 + lambda')"),
        Option("mask_variance", float, 2.0, low=0, help="weight of the variance term in SAMix's mask loss"),
    )

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, lam_k: float = 0.25,
                 mask_variance: float = 2.0, **kwargs):
        self._lam_k = float(lam_k)
        kwargs.setdefault("upsample", "bilinear")
        kwargs.setdefault("mask_loss_schedule", "constant")
        super().__init__(arch, num_classes, cifar_stem=cifar_stem, **kwargs)
        self.mask_variance = float(mask_variance)

    @classmethod
    def trunk_generator(cls, family: str, arch) -> dict:
        return {}

    def build_generator(self, in_channels: int, **kwargs) -> nn.Module:
        return SAMixBlock(in_channels, upsample=kwargs.get("upsample", "bilinear"), lam_k=self._lam_k)

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        return (f"N=2, Beta({cfg.mix_alpha:g}), SAMix block (k {cfg.samix_lam_k:g}), mask loss {cfg.mask_loss:g} "
                f"(L1 + {cfg.mask_variance:g} x variance)")

    def mask_loss_term(self, masks: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return mask_l1_variance_loss(masks, lam, self.mask_loss_margin, self.mask_variance)


__all__ = ["SAMix", "SAMixBlock", "mask_l1_variance_loss", "rescale_lambda"]
