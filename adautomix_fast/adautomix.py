"""AdAutoMix: the sampling plan and the losses of one step (ALGORITHM.md sections 3 and 4).

`AdAutoMix` holds the student q, the EMA teacher k and the generator G. The reference step
follows the released implementation fact by fact, including the order of every train-mode
forward pass (it decides the BatchNorm running statistics):

* teacher: clean batch x (full trunk; its layer3 output feeds G), generated mix x_g, then the
  cosine sources x[pi_1] .. x[pi_N];
* generator: the generator-side masks (pi, lambda_g) first, then the classifier-side masks
  (sigma, lambda_c), every slot projected separately;
* student: x, the pixel mixup (N >= 3 only), the classifier mix x_c.

No Python branch depends on a tensor value: the margin rule and the adversarial/cooperative
alternation are selected on the device with ``torch.where``, so the step never synchronises
with the host.
"""

from __future__ import annotations

import copy
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ema import ema_update_, teacher_pairs
from .generator import MaskGenerator, fp32_region, mix_images
from .models import Classifier


class MixPlan(NamedTuple):
    """Everything random in one step, sampled once (ALGORITHM.md section 3).

    lam_gen, lam_cls: [N] fp32 ratios of the generator batch and the classifier batch
        (the same values for N >= 3; two independent draws (u, 1-u) for N = 2).
    index_gen, index_cls: [N,B] int64 permutation tuples pi and sigma (slot 0 is the identity
        for N = 2).
    use_mixup: 0-dim bool, the margin rule: the classifier batch uses constant masks.
    """

    lam_gen: torch.Tensor
    lam_cls: torch.Tensor
    index_gen: torch.Tensor
    index_cls: torch.Tensor
    use_mixup: torch.Tensor


def margin_rule(lam_cls: torch.Tensor, margin: float) -> torch.Tensor:
    """0-dim bool: the classifier batch falls back to plain mixup (constant masks).

    As released: for N = 2 (lam_cls = (lam, 1 - lam)), lam <= margin or 1 - lam <= margin;
    for N >= 3, lam_1 <= margin or lam_1 > 1 - margin.
    """
    if lam_cls.shape[0] == 2:
        return (lam_cls[0] <= margin) | (lam_cls[1] <= margin)
    return (lam_cls[0] <= margin) | (lam_cls[0] > 1.0 - margin)


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                        lam: torch.Tensor) -> torch.Tensor:
    """MCE(z, tuple, lambda) = sum_i lambda_i * CE(z, y[tuple_i]), in fp32."""
    with fp32_region(logits):
        logits = logits.float()
        total = None
        for i in range(index.shape[0]):
            term = lam[i] * F.cross_entropy(logits, y[index[i]])
            total = term if total is None else total + term
        return total


def weighted_cosine(z: torch.Tensor, sources: list[torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
    """mean over the batch of sum_i lambda_i * cos_sim(z, sources[i]) (on logits, fp32)."""
    with fp32_region(z):
        z = z.float()
        total = None
        for i, src in enumerate(sources):
            term = F.cosine_similarity(z, src.float(), dim=-1) * lam[i]
            total = term if total is None else total + term
        return total.mean()


class AdAutoMix(nn.Module):
    """Student, EMA teacher and mask generator, with the reference step's losses."""

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, mix_samples: int = 3,
                 beta: float = 0.3, alpha: float = 0.5, lam_margin: float = 0.03,
                 lam_concat: bool = False, gen_norm: bool = False, upsample: str = "bilinear"):
        super().__init__()
        if not 2 <= mix_samples <= 5:
            raise ValueError(f"mix_samples must be in 2..5, got {mix_samples}")
        self.mix_samples = mix_samples
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.lam_margin = float(lam_margin)
        self.student = Classifier(arch, num_classes, cifar_stem)
        # k copies q at start; its parameters then follow q by EMA only (never by gradients).
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.generator = MaskGenerator(self.student.stage3_channels, lam_concat=lam_concat,
                                       norm=gen_norm, upsample=upsample)
        # Optimizer steps taken so far. Its parity selects the adversarial (even) or the
        # cooperative (odd) generator objective; kept on the device and in the state dict so a
        # resumed run continues the alternation exactly.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg, num_classes: int, cifar_stem: bool) -> "AdAutoMix":
        return cls(cfg.arch, num_classes, cifar_stem=cifar_stem, mix_samples=cfg.mix_samples,
                   beta=cfg.beta, alpha=cfg.alpha, lam_margin=cfg.lam_margin,
                   lam_concat=cfg.lam_concat, gen_norm=cfg.gen_norm, upsample=cfg.upsample)

    # ------------------------------------------------------------------ sampling (section 3)
    @property
    def device(self) -> torch.device:
        return self.num_updates.device

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None) -> MixPlan:
        """Draw lambda and both permutation tuples on the model's device with torch RNG.

        Permutations are ``argsort(rand(B))`` rather than ``randperm``: the same law, and a form
        that torch.compile handles on every supported version (spec/COMPILE.md fact 3).
        A ``generator`` (on the model's device) makes the plan reproducible.
        """
        dev, n, b = self.device, self.mix_samples, batch_size

        def perm() -> torch.Tensor:
            return torch.argsort(torch.rand(b, generator=generator, device=dev))

        if n == 2:
            u = torch.rand(2, generator=generator, device=dev)
            lam_gen = torch.stack([u[0], 1.0 - u[0]])
            lam_cls = torch.stack([u[1], 1.0 - u[1]])
            identity = torch.arange(b, device=dev)
            index_gen = torch.stack([identity, perm()])
            index_cls = torch.stack([identity, perm()])
        else:
            u = torch.rand(n, generator=generator, device=dev)
            lam_gen = lam_cls = u / u.sum()
            index_gen = torch.stack([perm() for _ in range(n)])
            index_cls = torch.stack([perm() for _ in range(n)])
        return MixPlan(lam_gen, lam_cls, index_gen, index_cls, margin_rule(lam_cls, self.lam_margin))

    def check_plan(self, plan: MixPlan, batch_size: int) -> None:
        n = self.mix_samples
        for name in ("index_gen", "index_cls"):
            idx = getattr(plan, name)
            if tuple(idx.shape) != (n, batch_size) or idx.dtype != torch.long:
                raise ValueError(f"plan.{name} must be int64 [{n},{batch_size}], got {idx.dtype} {list(idx.shape)}")
        for name in ("lam_gen", "lam_cls"):
            lam = getattr(plan, name)
            if tuple(lam.shape) != (n,):
                raise ValueError(f"plan.{name} must have shape [{n}], got {list(lam.shape)}")

    # ------------------------------------------------------------------ losses (section 4)
    def adversarial(self) -> torch.Tensor:
        """0-dim bool on the device: this step's generator objective is the adversarial one
        (1st, 3rd, 5th ... step of training)."""
        return self.num_updates % 2 == 0

    def step_losses(self, x: torch.Tensor, y: torch.Tensor, plan: MixPlan) -> dict[str, torch.Tensor]:
        """Every loss term of one step, from the given plan. ``loss`` is what one backward uses.

        Must run in train mode (BatchNorm uses batch statistics in the teacher, the student and
        G, as in the released implementation).
        """
        self.check_plan(plan, x.shape[0])
        teacher, student = self.teacher, self.student

        # Teacher on the clean batch: the whole trunk runs, as the released backbone does
        # (out_indices (2, 3)); layer3's output is G's input. No gradient reaches the teacher.
        f3 = teacher.stem_to_stage3(x)
        with torch.no_grad():
            teacher.forward_stages(f3, teacher.tap_stage)
        x_gen, x_pixel, x_cls = self.mixed_batches(f3, x, plan)

        # Generator objective, on the teacher: x_g, then one pass per cosine source x[pi_i].
        z_gen = teacher.head_mix(teacher.pooled(x_gen))
        with torch.no_grad():
            sources = [teacher.head_mix(teacher.pooled(x[plan.index_gen[i]])) for i in range(self.mix_samples)]
        terms = self.generator_objective(z_gen, sources, y, plan)

        # Classifier objective, on the student: three separate passes (own BN statistics each).
        z_one = student.head_one(student.pooled(x))
        z_pixel = student.head_mix(student.pooled(x_pixel)) if self.mix_samples >= 3 else None
        z_cls = student.head_mix(student.pooled(x_cls))
        return self.total_loss(terms, self.classifier_objective(z_one, z_pixel, z_cls, y, plan), plan)

    def forward(self, x: torch.Tensor, y: torch.Tensor, plan: MixPlan) -> dict[str, torch.Tensor]:
        """One step's losses (so that DistributedDataParallel can wrap the whole model)."""
        return self.step_losses(x, y, plan)

    # The pieces below are shared with the fused step (adautomix_fast.fused), so both compute
    # the same formulas; they differ only in how the networks' passes are arranged.
    def mixed_batches(self, f3: torch.Tensor, x: torch.Tensor, plan: MixPlan):
        """(x_gen, x_pixel, x_cls): the generator-side mix (trained through L_gen), the pixel
        mixup of the sigma tuple and the classifier-side mix (detached masks, or plain mixup
        under the margin rule). Generator side first, as released (G's BN running statistics)."""
        gen = self.generator
        m_gen = gen.mask_logits(f3, plan.index_gen, plan.lam_gen)
        x_gen = gen.mix(m_gen, x, plan.index_gen)
        with torch.no_grad():
            m_cls = gen.mask_logits(f3, plan.index_cls, plan.lam_cls)
            x_cls_generated = gen.mix(m_cls, x, plan.index_cls)
            # Margin rule: constant masks M_i = lambda_i, i.e. plain mixup of the sigma tuple.
            x_pixel = mix_images(plan.lam_cls, x, plan.index_cls)
            x_cls = torch.where(plan.use_mixup, x_pixel, x_cls_generated)
        return x_gen, x_pixel, x_cls

    def generator_objective(self, z_gen: torch.Tensor, sources: list[torch.Tensor], y: torch.Tensor,
                            plan: MixPlan) -> dict[str, torch.Tensor]:
        """L_k, the weighted cosine and L_gen (adversarial on odd steps, cooperative on even)."""
        loss_k = mixed_cross_entropy(z_gen, y, plan.index_gen, plan.lam_gen)
        cos = weighted_cosine(z_gen, sources, plan.lam_gen)
        adversarial = self.adversarial()
        loss_gen = torch.where(adversarial, -self.beta * loss_k + (1.0 - self.beta) * cos, loss_k)
        return dict(loss_gen=loss_gen, loss_k=loss_k, cos=cos, adversarial=adversarial.float())

    def classifier_objective(self, z_one: torch.Tensor, z_pixel: Optional[torch.Tensor], z_cls: torch.Tensor,
                             y: torch.Tensor, plan: MixPlan) -> dict[str, torch.Tensor]:
        """L_one, L_mce (N >= 3), L_re and L_amce from the student's logits."""
        with fp32_region(z_one):
            loss_one = F.cross_entropy(z_one.float(), y)
        terms: dict[str, torch.Tensor] = {}
        if z_pixel is not None:
            loss_mce = mixed_cross_entropy(z_pixel, y, plan.index_cls, plan.lam_cls)
            terms.update(loss_mce=loss_mce, loss_re=(1.0 - self.alpha) * loss_one + self.alpha * loss_mce)
        else:
            terms["loss_re"] = loss_one
        terms.update(loss_one=loss_one, loss_amce=mixed_cross_entropy(z_cls, y, plan.index_cls, plan.lam_cls))
        return terms

    @staticmethod
    def total_loss(gen_terms: dict, cls_terms: dict, plan: MixPlan) -> dict[str, torch.Tensor]:
        """L = L_amce + L_re + L_gen, with every term (and the plan's flags) for logging."""
        terms = {**cls_terms, **gen_terms}
        terms["loss"] = cls_terms["loss_amce"] + cls_terms["loss_re"] + gen_terms["loss_gen"]
        terms["use_mixup"] = plan.use_mixup.float()
        return terms

    # ------------------------------------------------------------------ evaluation heads
    # Every head this model is evaluated on, "<network>_<head>"; the headline is the paper's.
    HEADS = ("teacher_one", "teacher_mix", "student_one", "student_mix")
    HEADLINE = "teacher_one"

    def head_network(self, name: str) -> tuple[Classifier, str]:
        """(network, head attribute) of an evaluation head, e.g. "teacher_one" -> (teacher, "head_one")."""
        if name not in self.HEADS:
            raise ValueError(f"unknown head {name!r}; this model has {', '.join(self.HEADS)}")
        network, head = name.split("_", 1)
        return getattr(self, network), f"head_{head}"

    def eval_logits(self, x: torch.Tensor, heads: Optional[tuple[str, ...]] = None) -> dict[str, torch.Tensor]:
        """Logits of the given heads (default: all) on ``x``; one trunk pass per network. Call in
        eval mode for evaluation (BatchNorm running statistics)."""
        heads = self.HEADS if heads is None else heads
        pooled: dict[str, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        for name in heads:
            network, head = self.head_network(name)
            key = name.split("_", 1)[0]
            if key not in pooled:
                pooled[key] = network.pooled(x)
            out[name] = getattr(network, head)(pooled[key])
        return out

    # ------------------------------------------------------------------ EMA (section 6)
    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher parameters, student parameters): backbone, head_one and head_mix."""
        return teacher_pairs(self.teacher, self.student)

    @torch.no_grad()
    def update_teacher(self, momentum: torch.Tensor) -> None:
        ema, model = self.ema_pairs()
        ema_update_(ema, model, momentum)

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(student parameters, generator parameters); the teacher is never in the optimizer."""
        return list(self.student.parameters()), list(self.generator.parameters())
