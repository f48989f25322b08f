"""AdAutoMix: the sampling plan and the losses of one step (docs/algorithm.md, Sampling plan, Losses).

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
import random
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from ..models import build_classifier
from ..models.specs import ARCH_SPECS, arch_spec, is_library_arch
from ..step.ema import ema_update_, teacher_pairs
from ..step.numerics import at_least_fp32, fp32_region
from ..step.segmented_bn import segmented_norms, snapshot_batch_stats
from .base import MixModel, sample_beta
from .generator import GEN_KERNELS, UPSAMPLES, MaskGenerator, mask_statistics, mix_images
from .options import Option

GEN_OBJECTIVES = ("alternate", "adversarial", "cooperative")


class MixPlan(NamedTuple):
    """Everything random in one step, sampled once (docs/algorithm.md, Sampling plan).

    lam_gen, lam_cls: [N] fp32 ratios of the generator batch and the classifier batch
        (the same values for N >= 3; two independent draws (u, 1-u) for N = 2).
    index_gen, index_cls: [N,B] int64 permutation tuples pi and sigma (slot 0 is the identity
        for N = 2).
    use_mixup: 0-dim bool, the margin rule: the classifier batch uses constant masks.
    N is the plan's own (``index_gen.shape[0]``): it may change from step to step
    (``random_mix_samples``).
    """

    lam_gen: torch.Tensor
    lam_cls: torch.Tensor
    index_gen: torch.Tensor
    index_cls: torch.Tensor
    use_mixup: torch.Tensor
    # 0-dim bool: the generator is trained this step (released ``switch_off``: a coin flip per
    # step with probability ``gen_train_prob``); None: every step (the default).
    train_gen: Optional[torch.Tensor] = None


def margin_rule(lam_cls: torch.Tensor, margin: float) -> torch.Tensor:
    """0-dim bool: the classifier batch falls back to plain mixup (constant masks).

    As released: for N = 2 (lam_cls = (lam, 1 - lam)), lam <= margin or 1 - lam <= margin;
    for N >= 3, lam_1 <= margin or lam_1 > 1 - margin.
    """
    if lam_cls.shape[0] == 2:
        return (lam_cls[0] <= margin) | (lam_cls[1] <= margin)
    return (lam_cls[0] <= margin) | (lam_cls[0] > 1.0 - margin)


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                        lam: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """MCE(z, tuple, lambda) = sum_i lambda_i * CE(z, y[tuple_i]), in fp32."""
    with fp32_region(logits):
        logits = at_least_fp32(logits)
        total = None
        for i in range(index.shape[0]):
            ce = (F.cross_entropy(logits, y[index[i]], label_smoothing=label_smoothing) if label_smoothing
                  else F.cross_entropy(logits, y[index[i]]))
            term = lam[i] * ce
            total = term if total is None else total + term
        return total


def weighted_cosine(z: torch.Tensor, sources: list[torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
    """mean over the batch of sum_i lambda_i * cos_sim(z, sources[i]) (on logits, fp32)."""
    with fp32_region(z):
        z = at_least_fp32(z)
        total = None
        for i, src in enumerate(sources):
            term = F.cosine_similarity(z, at_least_fp32(src), dim=-1) * lam[i]
            total = term if total is None else total + term
        return total.mean()


class AdAutoMix(MixModel):
    """Student, EMA teacher and mask generator, with the reference step's losses.

    The ablation switches (paper Tables 5, 8, 9, 10; docs/methods.md) default to the released step:
    ``loss_one`` / ``loss_mce`` / ``loss_amce`` keep the clean CE (weight 1 - alpha), the pixel
    mixup's MCE (weight alpha, N >= 3) and the student's generated-mix MCE in the classifier's
    loss; ``loss_k`` / ``loss_cos`` keep the teacher's generated-mix CE and the cosine term in the
    generator's objective. A switched-off term is still computed and logged (so nothing else
    changes, BatchNorm statistics included) but leaves the loss. ``gen_objective``: "alternate"
    (released: adversarial on the 1st, 3rd ... step), "adversarial" or "cooperative" (every
    step). ``mix_alpha``: lambda's Beta(a, a) concentration (N >= 3: N draws normalised by their
    sum; N = 2: one draw per side, (u, 1 - u)); 1 is the released uniform. ``random_mix_samples``:
    N drawn from 2..mix_samples at every step (released ``is_random``). ``gen_train_prob``: the
    generator's objective enters the loss on that fraction of steps, a coin flip per step
    (released ``switch_off``).
    """

    name = "adautomix"
    title = "AdAutoMix"
    summary = "adversarial generator of N-image masks, EMA teacher (this engine's subject)"
    rank = 0
    # The released configs' generator per family (docs/algorithm.md, Published settings): N = 3
    # on small images and fine-grained sets, 2 on ImageNet; beta 0.3 (ImageNet 0.1); the lambda
    # channel on ImageNet and the fine-grained sets; on the CIFAR transformer recipes the
    # generator trained on 80% of the steps (switch_off 0.8, the released logs). The trunk's own
    # rules (``published_defaults``): nearest upsampling with a lambda channel for Swin, ConvNeXt
    # and DeiT, BatchNorm in the generator for the ImageNet bottleneck trunks.
    defaults = {
        "cifar": dict(mix_alpha=1.0, mix_samples=3, beta=0.3, alpha=0.5, lam_concat=False, gen_norm=False),
        "cifar-transformer": dict(mix_alpha=1.0, mix_samples=3, beta=0.3, alpha=0.5, lam_concat=False,
                                  gen_norm=False, gen_train_prob=0.8),
        "imagenet": dict(mix_alpha=1.0, mix_samples=2, beta=0.1, alpha=0.5, lam_concat=True, gen_norm=False),
        "fine-grained": dict(mix_alpha=1.0, mix_samples=3, beta=0.3, alpha=0.5, lam_concat=True, gen_norm=False,
                             upsample="bilinear"),
    }
    engine_settings = MixModel.engine_settings + ("seed",)
    options = (
        # The generator and the two objectives (docs/algorithm.md, Generator and Losses).
        Option("mix_samples", int, 3, low=2, high=5, help="N, images mixed per sample",
               range_help="AdAutoMix mixes at least two images"),
        Option("beta", float, 0.3, low=0, high=1, help="weight of the adversarial teacher loss"),
        Option("alpha", float, 0.5, low=0, high=1, help="weight of the pixel-mixup loss in L_re, N >= 3"),
        Option("lam_margin", float, 0.03, low=0, high=0.5, open_high=True,
               help="margin rule: plain mixup when a ratio is this close to 0 or 1"),
        Option("lam_concat", bool, False, help="feed lambda to the generator as a channel"),
        Option("gen_norm", bool, False, help="BatchNorm in the generator's query/key projections"),
        Option("upsample", str, "bilinear", choices=UPSAMPLES, help="mask upsampling"),
        Option("gen_kernels", str, "auto", choices=GEN_KERNELS, identity=False, param="",
               help="generator ops: auto takes the Triton kernels with the fused impl on CUDA, else PyTorch"),
        # The ablation switches (paper Tables 5, 8, 9, 10) and the released step's per-step choices.
        Option("loss_one", bool, True, help="clean cross-entropy in the classifier loss, weight 1 - alpha"),
        Option("loss_mce", bool, True, help="pixel-mixup MCE in the classifier loss, weight alpha, N >= 3"),
        Option("loss_amce", bool, True, help="the student's MCE on the generated mix"),
        Option("loss_k", bool, True, help="the teacher's generated-mix CE in the generator objective"),
        Option("loss_cos", bool, True, help="the cosine term of the adversarial generator objective"),
        Option("gen_objective", str, "alternate", choices=GEN_OBJECTIVES,
               help="generator objective: alternate (released: adversarial every other step), adversarial or "
                    "cooperative every step"),
        Option("random_mix_samples", bool, False,
               help="draw N from 2..--mix-samples every step (released is_random; one compiled graph per N)"),
        Option("gen_train_prob", float, 1.0, low=0, high=1, open_low=True,
               help="train the generator on this fraction of steps, a coin flip per step (released switch_off)"),
    )
    HEADS = ("teacher_one", "teacher_mix", "student_one", "student_mix")
    HEADLINE = "teacher_one"
    has_teacher = True
    uses_segmented_bn = True
    # The teacher scores every clean source of the generated mix for the cosine term (AutoMix
    # has no cosine term and skips those passes).
    cosine_sources = True

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, mix_samples: int = 3,
                 beta: float = 0.3, alpha: float = 0.5, lam_margin: float = 0.03,
                 lam_concat: bool = False, gen_norm: bool = False, upsample: str = "bilinear",
                 mix_alpha: float = 1.0, label_smoothing: float = 0.0, loss_one: bool = True,
                 loss_mce: bool = True, loss_amce: bool = True, loss_k: bool = True, loss_cos: bool = True,
                 gen_objective: str = "alternate", random_mix_samples: bool = False,
                 gen_train_prob: float = 1.0, seed: int = 0, drop_path: float = 0.0):
        super().__init__()
        if not 2 <= mix_samples <= 5:
            raise ValueError(f"mix_samples must be in 2..5, got {mix_samples}")
        if gen_objective not in GEN_OBJECTIVES:
            raise ValueError(f"gen_objective must be one of {GEN_OBJECTIVES}, got {gen_objective!r}")
        self.mix_samples = mix_samples
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.lam_margin = float(lam_margin)
        self.mix_alpha = float(mix_alpha)
        self.label_smoothing = float(label_smoothing)
        self.loss_one, self.loss_mce, self.loss_amce = bool(loss_one), bool(loss_mce), bool(loss_amce)
        self.loss_k, self.loss_cos = bool(loss_k), bool(loss_cos)
        self.gen_objective = gen_objective
        self.random_mix_samples = bool(random_mix_samples)
        self.gen_train_prob = float(gen_train_prob)
        self.seed = int(seed)
        # drop_path: the trunk's stochastic depth (Swin, ConvNeXt, DeiT recipes; 0 for ResNets).
        self.student = build_classifier(arch, num_classes, cifar_stem, drop_path=drop_path)
        # k copies q at start; its parameters then follow q by EMA only (never by gradients).
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.generator = self.build_generator(self.student.stage3_channels, lam_concat=lam_concat,
                                              norm=gen_norm, upsample=upsample)
        # num_updates (MixModel): its parity selects the adversarial (even) or the cooperative
        # (odd) generator objective, so a resumed run continues the alternation exactly.

    def build_generator(self, in_channels: int, **kwargs) -> nn.Module:
        """The mask generator G (AdAutoMix's N-slot cross-attention mix block)."""
        return MaskGenerator(in_channels, **kwargs)

    @classmethod
    def check_config(cls, cfg, image_side: int) -> None:
        if cfg.random_mix_samples and cfg.mix_samples < 3:
            raise UsageError("--random-mix-samples draws N from 2..--mix-samples: set --mix-samples 3 or more")

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        return (f"N={cfg.mix_samples}" + (" (random 2..N)" if cfg.random_mix_samples else "")
                + f", Beta({cfg.mix_alpha:g})")

    @classmethod
    def published_defaults(cls, family: str, arch) -> dict:
        values = super().published_defaults(family, arch)
        values.update(cls.trunk_generator(family, arch))
        return values

    @classmethod
    def trunk_generator(cls, family: str, arch) -> dict:
        """The generator settings the trunk fixes (``ARCH_SPECS``: nearest upsampling and the
        lambda channel of Swin, ConvNeXt and DeiT; the released ImageNet R50 config's BatchNorm in
        the mix block, which ResNeXt-50, with the same 1024-channel stage 3, follows)."""
        out: dict = {}
        if isinstance(arch, str) and (arch in ARCH_SPECS or is_library_arch(arch)):
            spec = arch_spec(arch)
            if spec.upsample is not None:
                out["upsample"] = spec.upsample
            if spec.lam_concat is not None:
                out["lam_concat"] = spec.lam_concat
        if family == "imagenet" and arch in ("r50", "rx50"):
            out["gen_norm"] = True
        return out

    # ------------------------------------------------------------------ sampling plan
    def mix_samples_at(self, step: int) -> Optional[int]:
        """With ``random_mix_samples``: N uniform on 2..mix_samples, a function of (seed, step)
        alone (released ``is_random``: Python's random.randint per step)."""
        if not self.random_mix_samples:
            return None
        return random.Random(self.seed * 1_000_003 + step).randint(2, self.mix_samples)

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> MixPlan:
        """Draw lambda and both permutation tuples on the model's device with torch RNG.

        Permutations are ``argsort(rand(B))`` rather than ``randperm``: the same law, and a form
        that torch.compile handles on every supported version (docs/compile.md, fact 3).
        A ``generator`` (on the model's device) makes the plan reproducible. ``n``: the number of
        images mixed this step (default ``mix_samples``).
        """
        dev, b = self.device, batch_size
        n = self.mix_samples if n is None else n

        def perm() -> torch.Tensor:
            return torch.argsort(torch.rand(b, generator=generator, device=dev))

        if n == 2:
            u = sample_beta(self.mix_alpha, (2,), generator, dev)
            lam_gen = torch.stack([u[0], 1.0 - u[0]])
            lam_cls = torch.stack([u[1], 1.0 - u[1]])
            identity = torch.arange(b, device=dev)
            index_gen = torch.stack([identity, perm()])
            index_cls = torch.stack([identity, perm()])
        else:
            u = sample_beta(self.mix_alpha, (n,), generator, dev)
            lam_gen = lam_cls = u / u.sum()
            index_gen = torch.stack([perm() for _ in range(n)])
            index_cls = torch.stack([perm() for _ in range(n)])
        train_gen = None
        if self.gen_train_prob < 1.0:
            train_gen = torch.rand((), generator=generator, device=dev) < self.gen_train_prob
        return MixPlan(lam_gen, lam_cls, index_gen, index_cls, margin_rule(lam_cls, self.lam_margin), train_gen)

    def check_plan(self, plan: MixPlan, batch_size: int) -> None:
        n = plan.index_gen.shape[0]
        if not 2 <= n <= self.mix_samples:
            raise ValueError(f"plan mixes {n} images; this model mixes 2..{self.mix_samples}")
        for name in ("index_gen", "index_cls"):
            idx = getattr(plan, name)
            if tuple(idx.shape) != (n, batch_size) or idx.dtype != torch.long:
                raise ValueError(f"plan.{name} must be int64 [{n},{batch_size}], got {idx.dtype} {list(idx.shape)}")
        for name in ("lam_gen", "lam_cls"):
            lam = getattr(plan, name)
            if tuple(lam.shape) != (n,):
                raise ValueError(f"plan.{name} must have shape [{n}], got {list(lam.shape)}")

    # ------------------------------------------------------------------ losses
    def adversarial(self) -> torch.Tensor:
        """0-dim bool on the device: this step's generator objective is the adversarial one
        (alternate: the 1st, 3rd, 5th ... step of training)."""
        if self.gen_objective == "alternate":
            return self.num_updates % 2 == 0
        return torch.full((), self.gen_objective == "adversarial", dtype=torch.bool, device=self.device)

    def step_losses(self, x: torch.Tensor, y: torch.Tensor, plan: MixPlan) -> dict[str, torch.Tensor]:
        """Every loss term of one step, from the given plan. ``loss`` is what one backward uses.

        Must run in train mode (BatchNorm uses batch statistics in the teacher, the student and
        G, as in the released implementation).
        """
        self.check_plan(plan, x.shape[0])
        teacher, student = self.teacher, self.student
        n = plan.index_gen.shape[0]

        # Teacher on the clean batch: the whole trunk runs, as the released backbone does
        # (out_indices (2, 3)); layer3's output is G's input. No gradient reaches the teacher.
        f3 = teacher.stem_to_stage3(x)
        with torch.no_grad():
            teacher.forward_stages(f3, teacher.tap_stage)
        x_gen, x_pixel, x_cls, gen_masks = self.mixed_batches(f3, x, plan)

        # Generator objective, on the teacher: x_g, then one pass per cosine source x[pi_i].
        z_gen = teacher.head_mix(teacher.pooled(x_gen))
        sources = None
        if self.cosine_sources:
            with torch.no_grad():
                sources = [teacher.head_mix(teacher.pooled(x[plan.index_gen[i]])) for i in range(n)]
        terms = self.generator_objective(z_gen, sources, y, plan, gen_masks)

        # Classifier objective, on the student: three separate passes (own BN statistics each).
        z_one = student.head_one(student.pooled(x))
        z_pixel = student.head_mix(student.pooled(x_pixel)) if n >= 3 else None
        z_cls = student.head_mix(student.pooled(x_cls))
        return self.total_loss(terms, self.classifier_objective(z_one, z_pixel, z_cls, y, plan), plan)

    def fused_losses(self, x: torch.Tensor, y: torch.Tensor, plan: MixPlan, *, batched_student: bool = True,
                     teacher_bn_stats: str = "exact") -> dict[str, torch.Tensor]:
        """Every loss term of one step, arranged as the fused step runs it (adautomix_fast.step.fused):
        one teacher pass on the clean batch gives G's features and every cosine-source logit
        (train-mode BatchNorm statistics do not depend on sample order), the N source passes'
        running-statistics updates are replayed (``teacher_bn_stats="exact"``), and the student's
        passes run as one batch through segmented BatchNorm (``batched_student``).

        The BatchNorm layers must be SegmentedBatchNorm2d with the segment size set to the batch
        size (`FusedStep` does this).
        """
        teacher, student = self.teacher, self.student
        n = plan.index_gen.shape[0]

        # Teacher, clean batch, once: stage-3 features for G and the cosine-source logits.
        f3 = teacher.stem_to_stage3(x)
        with torch.no_grad():
            z_clean = teacher.head_mix(teacher.stage3_to_pooled(f3))
        teacher_norms = segmented_norms(teacher)
        replay = teacher_bn_stats == "exact" and self.cosine_sources
        clean_stats = snapshot_batch_stats(teacher_norms) if replay else None
        x_gen, x_pixel, x_cls, gen_masks = self.mixed_batches(f3, x, plan)

        # Teacher on the generated mix (gradient flows back into G through x_gen).
        z_gen = teacher.head_mix(teacher.pooled(x_gen))
        if clean_stats is not None:
            # The reference's N source passes, replayed: same batch statistics as the clean pass.
            for norm, (mean, var) in zip(teacher_norms, clean_stats):
                norm.replay_running_stats(mean, var, times=n)
        sources = [z_clean[plan.index_gen[i]] for i in range(n)] if self.cosine_sources else None
        gen_terms = self.generator_objective(z_gen, sources, y, plan, gen_masks)

        # Student: clean, pixel mixup (N >= 3), generated mix, batched or separate.
        inputs = [x, x_pixel, x_cls] if n >= 3 else [x, x_cls]
        if batched_student:
            pooled = student.pooled(torch.cat(inputs)).split(x.shape[0])
        else:
            pooled = [student.pooled(t) for t in inputs]
        z_pixel = student.head_mix(pooled[1]) if n >= 3 else None
        cls_terms = self.classifier_objective(student.head_one(pooled[0]), z_pixel, student.head_mix(pooled[-1]),
                                              y, plan)
        return self.total_loss(gen_terms, cls_terms, plan)

    # The pieces below are shared by the reference and the fused arrangement, so both compute
    # the same formulas; they differ only in how the networks' passes are arranged.
    def mixed_batches(self, f3: torch.Tensor, x: torch.Tensor, plan: MixPlan):
        """From the teacher's tap state ``f3`` (``stem_to_stage3``):
        (x_gen, x_pixel, x_cls, gen_masks): the generator-side mix (trained through L_gen), the
        pixel mixup of the sigma tuple, the classifier-side mix (detached masks, or plain mixup
        under the margin rule) and the generator side's masks [B,N,H,W] when a loss needs them
        (``needs_gen_masks``; else None). Generator side first, as released (G's BN running
        statistics)."""
        gen = self.generator
        # The tap state -> the generator's [B, C, h, w] input (the identity for ResNet/ConvNeXt;
        # Swin's LayerNorm of the merged map, DeiT's patch tokens as a map).
        f3 = self.teacher.tap_features(f3)
        m_gen = gen.mask_logits(f3, plan.index_gen, plan.lam_gen)
        gen_masks = None
        if self.needs_gen_masks:
            x_gen, gen_masks = gen.mix(m_gen, x, plan.index_gen, return_masks=True)
        else:
            x_gen = gen.mix(m_gen, x, plan.index_gen)
        with torch.no_grad():
            m_cls = gen.mask_logits(f3, plan.index_cls, plan.lam_cls)
            x_cls_generated = gen.mix(m_cls, x, plan.index_cls)
            # Margin rule: constant masks M_i = lambda_i, i.e. plain mixup of the sigma tuple.
            x_pixel = mix_images(plan.lam_cls, x, plan.index_cls)
            x_cls = torch.where(plan.use_mixup, x_pixel, x_cls_generated)
        return x_gen, x_pixel, x_cls, gen_masks

    # AdAutoMix's objectives need no masks; AutoMix's mask loss does.
    needs_gen_masks = False

    def generator_objective(self, z_gen: torch.Tensor, sources: Optional[list[torch.Tensor]], y: torch.Tensor,
                            plan: MixPlan, gen_masks: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """L_k, the weighted cosine and L_gen (alternate: adversarial on odd steps, cooperative on
        even ones), with the ablation switches applied."""
        loss_k = mixed_cross_entropy(z_gen, y, plan.index_gen, plan.lam_gen, self.label_smoothing)
        cos = weighted_cosine(z_gen, sources, plan.lam_gen)
        adversarial = self.adversarial()
        k_term = loss_k if self.loss_k else torch.zeros_like(loss_k)
        adv = -self.beta * k_term + (1.0 - self.beta) * cos if self.loss_cos else -self.beta * k_term
        loss_gen = torch.where(adversarial, adv, k_term)
        if plan.train_gen is not None:
            loss_gen = torch.where(plan.train_gen, loss_gen, torch.zeros_like(loss_gen))
        return dict(loss_gen=loss_gen, loss_k=loss_k, cos=cos, adversarial=adversarial.float())

    def classifier_objective(self, z_one: torch.Tensor, z_pixel: Optional[torch.Tensor], z_cls: torch.Tensor,
                             y: torch.Tensor, plan: MixPlan) -> dict[str, torch.Tensor]:
        """L_one, L_mce (N >= 3), L_re and L_amce from the student's logits."""
        ls = self.label_smoothing
        with fp32_region(z_one):
            loss_one = (F.cross_entropy(at_least_fp32(z_one), y, label_smoothing=ls) if ls
                        else F.cross_entropy(at_least_fp32(z_one), y))
        terms: dict[str, torch.Tensor] = {}
        one_term = loss_one if self.loss_one else None
        if z_pixel is not None:
            loss_mce = mixed_cross_entropy(z_pixel, y, plan.index_cls, plan.lam_cls, ls)
            parts = ([(1.0 - self.alpha) * one_term] if one_term is not None else []) + \
                    ([self.alpha * loss_mce] if self.loss_mce else [])
            terms.update(loss_mce=loss_mce, loss_re=_sum_or_zero(parts, loss_one))
        else:
            terms["loss_re"] = one_term if one_term is not None else torch.zeros_like(loss_one)
        terms.update(loss_one=loss_one, loss_amce=mixed_cross_entropy(z_cls, y, plan.index_cls, plan.lam_cls, ls))
        return terms

    def total_loss(self, gen_terms: dict, cls_terms: dict, plan: MixPlan) -> dict[str, torch.Tensor]:
        """L = L_amce + L_re + L_gen, with every term (and the plan's flags) for logging."""
        terms = {**cls_terms, **gen_terms}
        amce = cls_terms["loss_amce"] if self.loss_amce else torch.zeros_like(cls_terms["loss_amce"])
        terms["loss"] = amce + cls_terms["loss_re"] + gen_terms["loss_gen"]
        terms["use_mixup"] = plan.use_mixup.float()
        if plan.train_gen is not None:
            terms["train_gen"] = plan.train_gen.float()
        return terms

    # ------------------------------------------------------------------ EMA teacher
    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher parameters, student parameters): backbone, head_one and head_mix."""
        return teacher_pairs(self.teacher, self.student)

    @torch.no_grad()
    def update_teacher(self, momentum: torch.Tensor) -> None:
        ema, model = self.ema_pairs()
        ema_update_(ema, model, momentum)

    # ------------------------------------------------------------------ pictures and diagnostics
    @torch.no_grad()
    def generated_mix(self, x: torch.Tensor, plan: MixPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, masks [B,N,H,W] fp32) of the plan's generator-side tuple, with the
        teacher and G in eval mode (running statistics), so that nothing of the training state
        changes: no BatchNorm buffer, no random number, no gradient."""
        was = (self.teacher.training, self.generator.training)
        self.teacher.eval()
        self.generator.eval()
        try:
            f3 = self.teacher.tap_features(self.teacher.stem_to_stage3(x))
            m = self.generator.mask_logits(f3, plan.index_gen, plan.lam_gen)
            mixed, masks = self.generator.mix(m, x, plan.index_gen, return_masks=True)
        finally:
            self.teacher.train(was[0])
            self.generator.train(was[1])
        return mixed, masks.float()

    @torch.no_grad()
    def visualize(self, x: torch.Tensor, y: torch.Tensor, plan: MixPlan, count: int = 4) -> dict:
        """The generator-side batch of one step (sources, masks, mixed images, lambdas) for the
        first ``count`` samples, with the teacher in eval mode (running statistics) so that
        drawing changes no state."""
        mixed, masks = self.generated_mix(x, plan)
        k = min(count, x.shape[0])
        sources = torch.stack([x[plan.index_gen[i, :k]] for i in range(plan.index_gen.shape[0])])
        return {"sources": sources, "masks": masks[:k], "mixed": mixed[:k], "lam": plan.lam_gen,
                "title": f"{self.name} generator-side mix"}

    @torch.no_grad()
    def mask_diagnostics(self, x: torch.Tensor, y: torch.Tensor, plan: MixPlan) -> Optional[dict[str, float]]:
        """``mask_spread`` and ``mask_lambda_gap`` (`generator.mask_statistics`) of the masks G
        makes for the plan's generator-side tuple on the batch x: one trunk pass to the tap and
        one generator forward, in eval mode (`generated_mix`)."""
        _, masks = self.generated_mix(x, plan)
        return mask_statistics(masks, plan.lam_gen)


def _sum_or_zero(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The sum of the terms kept by the ablation switches (zero when none is kept)."""
    if not parts:
        return torch.zeros_like(like)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
