"""AutoMix (Liu et al. 2022), the cooperative predecessor of AdAutoMix, in the same machinery.

As OpenMixup's ``AutoMixup`` (classifiers/automix.py) and ``PixelMixBlock`` (heads/pmix_block.py):

* N = 2; two independent lambdas ~ Beta(2, 2): one for the generator-side ("mix block") batch,
  one for the classifier-side ("backbone") batch; two independent permutations; slot 0 is the
  image itself (weight lambda), slot 1 its partner (weight 1 - lambda).
* The mix block: one 1x1 projection (no activation; BatchNorm optional) applied to the image's
  stage-3 features (with a lambda channel when ``lam_concat``) for the queries and to the
  partner's (with 1 - lambda) for the keys, one 1-channel value of the partner's features, one
  attention map P = softmax(q k^T / sqrt(d)) over the partner's positions, z = P v; the partner's
  mask is sigmoid(upsample(z)) (nearest), the image's 1 - sigmoid: the same as a softmax over the
  two slots of the logits (0, z), which is how the engine's upsample-softmax-mix op (Triton
  kernel on a GPU) mixes them.
* The generator minimises the EMA teacher's mixed cross-entropy on its batch (cooperative every
  step, no cosine term, no source passes) plus an L1 mask loss
  max(|mean(mask of the image) - lambda| - margin, 0) (margin 0.1, batch mean) of weight 0.1,
  constant (released CIFAR config) or annealed by cosine to 0 over training.
* The classifier: the student's clean CE (head_one) plus its mixed CE (head_mix) on the
  classifier-side batch, made with detached masks, or constant masks (plain mixup) when that
  lambda is within 0.08 of 0 or 1. One backward, one SGD step; the teacher (trunk and both heads)
  follows the student by EMA.

Differences from the released AutoMix are listed in docs/methods.md, "AutoMix" (the mask-loss schedule).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from ..errors import UsageError
from .adautomix import AdAutoMix, MixPlan, mixed_cross_entropy
from .generator import MaskGenerator, _kernel_ops, cross_attention_mask_reference
from .options import FAMILIES, Option


class PixelMixBlock(nn.Module):
    """AutoMix's mix block for two slots: mask logits (0, z) from the features (module docstring).

    Args:
        in_channels: stage-3 channels of the trunk.
        lam_concat: append the slot's lambda as a constant channel (1 - lambda for the partner).
        norm: BatchNorm after the projection (then without bias).
        upsample: "nearest" (AutoMix) or "bilinear".
        reduction: d = in_channels // reduction.
    """

    def __init__(self, in_channels: int, lam_concat: bool = False, norm: bool = False,
                 upsample: str = "nearest", reduction: int = 2):
        super().__init__()
        if upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        self.in_channels = in_channels
        self.lam_concat = lam_concat
        self.norm = norm
        self.upsample = upsample
        self.kernels = "torch"      # "triton": the fused kernels (set from the run config)
        self.dim = max(in_channels // reduction, 1)
        slot_channels = in_channels + (1 if lam_concat else 0)
        layers: list[nn.Module] = [nn.Conv2d(slot_channels, self.dim, kernel_size=1, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(self.dim))
        self.query = nn.Sequential(*layers)   # also the key projection (OpenMixup: key=None)
        self.value = nn.Conv2d(slot_channels, 1, kernel_size=1, bias=True)
        self.reset_parameters()               # OpenMixup init_weights('normal'): N(0, 0.01), bias 0

    reset_parameters = MaskGenerator.reset_parameters
    slot_inputs = MaskGenerator.slot_inputs
    mix = MaskGenerator.mix

    def partner_logits(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: tuple[int, int, int]):
        """(0, z) [B, 2, h, w] fp32 from queries q, keys k [B,P,d] and the partner's value v [B,P]:
        z = softmax(q k^T / sqrt(d)) v. The N-slot attention op with N = 2 computes, for slot 0,
        softmax(q_0 k_1^T * scale) v_0, which is z when slot 0 holds q and v and slot 1 holds k;
        slot 1's output is not used."""
        b, h, w = shape
        qs, ks, vs = torch.stack([q, k]), torch.stack([q, k]), torch.stack([v, v])
        scale = self.dim ** -0.5
        if self.kernels == "triton":
            m = _kernel_ops().cross_attention_mask(qs, ks, vs, scale=scale)
        else:
            m = cross_attention_mask_reference(qs, ks, vs, scale=scale)
        z = m[0].reshape(b, 1, h, w).float()
        return torch.cat([torch.zeros_like(z), z], dim=1)

    def mask_logits(self, feats: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """[B, 2, h, w] fp32: (0, z), z the partner's mask logit (softmax over slots = (1 - s, s),
        s = sigmoid(z))."""
        if index.shape[0] != 2:
            raise ValueError(f"AutoMix's mix block mixes two images, got {index.shape[0]} slots")
        b, _, h, w = feats.shape
        own, partner = self.slot_inputs(feats, index, lam)
        v = self.value(partner).flatten(1)                              # [B,P], the partner's value
        q = self.query(own).flatten(2).transpose(1, 2)                 # [B,P,d]
        k = self.query(partner).flatten(2).transpose(1, 2)             # [B,P,d]
        return self.partner_logits(q, k, v, (b, h, w))


class AutoMix(AdAutoMix):
    """AutoMix: AdAutoMix's student/teacher/EMA machinery with AutoMix's mix block and objective."""

    name = "automix"
    title = "AutoMix"
    summary = "a generator of two-image masks trained cooperatively, EMA teacher, L1 mask loss"
    rank = 1
    # OpenMixup AutoMix: N = 2, Beta(2, 2), margin 0.08, nearest upsampling, cooperative generator
    # without a cosine term, L1 mask loss 0.1 (margin 0.1): constant in the released CIFAR config,
    # annealed in the ImageNet one.
    # The lambda channel as AdAutoMix's generator on each family (the trunk's own rule on top);
    # the objective AutoMix's step always uses, for the run's records (the options are excluded).
    defaults = {family: dict(mix_alpha=2.0, mix_samples=2, lam_margin=0.08, upsample="nearest", gen_norm=False,
                             lam_concat=family in ("imagenet", "fine-grained"), gen_objective="cooperative",
                             loss_cos=False, mask_loss=0.1,
                             mask_loss_margin=0.1, mask_loss_schedule="constant" if family == "cifar" else "cosine")
                for family in FAMILIES}
    # AutoMix's generator is trained cooperatively on two images, with no cosine term and no pixel
    # mixup: AdAutoMix's settings of those are not AutoMix's.
    excluded_options = ("beta", "alpha", "gen_objective", "loss_cos", "loss_mce", "random_mix_samples")
    options = (
        Option("mask_loss", float, 0.0, low=0, help="weight of the L1 mask loss"),
        Option("mask_loss_margin", float, 0.1, low=0, help="margin of the L1 mask loss"),
        Option("mask_loss_schedule", str, "cosine", choices=("cosine", "constant"),
               help="mask-loss weight annealed to 0 by cosine, or constant (the released CIFAR config)"),
    )
    cosine_sources = False

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, mask_loss: float = 0.1,
                 mask_loss_margin: float = 0.1, mask_loss_schedule: str = "cosine", **kwargs):
        kwargs["mix_samples"] = 2
        kwargs.setdefault("upsample", "nearest")
        kwargs["gen_objective"] = "cooperative"
        kwargs["loss_cos"] = False
        super().__init__(arch, num_classes, cifar_stem=cifar_stem, **kwargs)
        self.mask_loss = float(mask_loss)
        self.mask_loss_margin = float(mask_loss_margin)
        self.mask_loss_schedule = mask_loss_schedule
        self.needs_gen_masks = self.mask_loss > 0
        # The mask loss's weight this step (a 0-dim device tensor written before every step).
        self.register_buffer("mask_loss_weight", torch.tensor(self.mask_loss), persistent=False)

    def build_generator(self, in_channels: int, **kwargs) -> nn.Module:
        return PixelMixBlock(in_channels, **kwargs)

    @classmethod
    def check_config(cls, cfg, image_side: int) -> None:
        if cfg.mix_samples != 2:
            raise UsageError(f"AutoMix mixes two images (got --mix-samples {cfg.mix_samples}); drop --mix-samples")
        super().check_config(cfg, image_side)

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        return f"N=2, Beta({cfg.mix_alpha:g}), mask loss {cfg.mask_loss:g} ({cfg.mask_loss_schedule})"

    @classmethod
    def trunk_generator(cls, family: str, arch) -> dict:
        """The trunk's lambda channel; AutoMix keeps its nearest upsampling and its mix block
        without BatchNorm on every trunk."""
        values = super().trunk_generator(family, arch)
        return {k: v for k, v in values.items() if k == "lam_concat"}

    def schedule_values(self, step: int, total_steps: int) -> dict[str, float]:
        if self.mask_loss_schedule == "constant":
            return {"mask_loss_weight": self.mask_loss}
        progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
        return {"mask_loss_weight": self.mask_loss * (1.0 + math.cos(math.pi * progress)) / 2.0}

    def mask_loss_term(self, masks: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """The mask loss on the generator's masks [B,2,H,W] (AutoMix: the L1 loss)."""
        return mask_l1_loss(masks, lam, self.mask_loss_margin)

    def generator_objective(self, z_gen: torch.Tensor, sources: Optional[list[torch.Tensor]], y: torch.Tensor,
                            plan: MixPlan, gen_masks: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """L_gen = L_k (the teacher's mixed CE on the generator's batch) + w * L_mask."""
        loss_k = mixed_cross_entropy(z_gen, y, plan.index_gen, plan.lam_gen, self.label_smoothing)
        loss_gen = loss_k if self.loss_k else torch.zeros_like(loss_k)
        terms = {"loss_k": loss_k}
        if gen_masks is not None:
            loss_mask = self.mask_loss_term(gen_masks, plan.lam_gen)
            loss_gen = loss_gen + self.mask_loss_weight * loss_mask
            terms["loss_mask"] = loss_mask
        if plan.train_gen is not None:
            loss_gen = torch.where(plan.train_gen, loss_gen, torch.zeros_like(loss_gen))
        terms["loss_gen"] = loss_gen
        return terms


def mask_l1_loss(masks: torch.Tensor, lam: torch.Tensor, margin: float) -> torch.Tensor:
    """AutoMix's L1 mask loss: max(|1 - mean(partner mask) - lambda| - margin, 0), the mean over the
    whole batch and every pixel (OpenMixup PixelMixBlock.mask_loss, mode "L1"). masks: [B,2,H,W]
    (slot 0 the image, weight lambda = lam[0]; slot 1 the partner)."""
    mean_partner = masks[:, 1].float().mean()
    return torch.clamp(torch.abs(1.0 - mean_partner - lam[0]) - margin, min=0.0)


__all__ = ["AutoMix", "PixelMixBlock", "mask_l1_loss"]
