"""What every training method's model offers the engine (the reference and fused steps, the
trainer, checkpoints, evaluation and the pictures), and the pieces the methods share.

A method is one module: a model class (an ``nn.Module`` deriving from `MixModel`) with

* ``sample_plan(batch_size, generator=None, n=None, image_size=None)``: every random quantity of one step (lambda,
  permutations, boxes, masks, layers ...) drawn *on the device* into a NamedTuple of tensors, with
  no host synchronisation (``generator``: a torch.Generator for reproducible eager plans; the
  fused step samples inside its graph from the default generator);
* ``step_losses(x, y, plan)``: every loss term of the step, a dict whose ``loss`` is what one
  backward uses; the mixing itself is a pure function of (images, plan);
* optionally ``fused_losses(x, y, plan, **options)``: the same mathematics arranged for the fused
  step (default: ``step_losses``);
* ``HEADS`` / ``HEADLINE``: the heads it is evaluated on;
* ``trainable_parameters()``: (student parameters, generator parameters); and, for methods with an
  EMA teacher, ``has_teacher = True`` with ``ema_pairs()``.

The steps (``reference.ReferenceStep``, ``fused.FusedStep``, sharing ``trainstep.TrainStep``),
the optimizer, the schedules, the checkpoint format and the trainer are shared by every method.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import Classifier, drop_path_rate
from ..step.numerics import at_least_fp32, fp32_region
from .options import Option


# ---------------------------------------------------------------------------- sampling helpers
def sample_beta(alpha: float, shape: tuple[int, ...], generator: Optional[torch.Generator],
                device: torch.device) -> torch.Tensor:
    """Beta(alpha, alpha) draws on the device, fp32: G1 / (G1 + G2) with G ~ Gamma(alpha).

    alpha = 1 is Uniform(0, 1) and uses ``torch.rand`` (the cheaper, exactly uniform draw).
    """
    if alpha == 1.0:
        return torch.rand(shape, generator=generator, device=device)
    conc = torch.full(shape, float(alpha), device=device)
    g1 = torch._standard_gamma(conc, generator=generator)
    g2 = torch._standard_gamma(conc, generator=generator)
    return g1 / (g1 + g2)


def random_permutation(batch_size: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """A uniform random permutation of ``batch_size`` indices (int64 [B]).

    ``argsort(rand(B))`` rather than ``randperm``: the same law, and a form torch.compile handles
    on every supported torch (docs/compile.md, fact 3).
    """
    return torch.argsort(torch.rand(batch_size, generator=generator, device=device))


def uniform_int(high: int, generator: Optional[torch.Generator], device: torch.device,
                shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Integers uniform on [0, high), int64, on the device (no host sync)."""
    return torch.randint(0, high, shape, generator=generator, device=device)


# ---------------------------------------------------------------------------- losses
def cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Batch-mean cross-entropy in fp32 (autocast off), with optional label smoothing."""
    with fp32_region(logits):
        if label_smoothing:
            return F.cross_entropy(at_least_fp32(logits), y, label_smoothing=label_smoothing)
        return F.cross_entropy(at_least_fp32(logits), y)


def pair_mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor,
                             label_smoothing: float = 0.0) -> torch.Tensor:
    """lam * CE(z, y) + (1 - lam) * CE(z, y[perm]): the baselines' hard mixed loss (OpenMixup's
    ClsHead); equal to soft-target CE with lam * onehot(y) + (1 - lam) * onehot(y[perm]).
    ``lam`` is a 0-dim tensor (one per batch) or a [B] tensor (one per sample)."""
    with fp32_region(logits):
        z = at_least_fp32(logits)
        if lam.dim() == 0:
            return (lam * cross_entropy(z, y, label_smoothing)
                    + (1.0 - lam) * cross_entropy(z, y[perm], label_smoothing))
        a = F.cross_entropy(z, y, reduction="none", label_smoothing=label_smoothing)
        b = F.cross_entropy(z, y[perm], reduction="none", label_smoothing=label_smoothing)
        return (lam * a + (1.0 - lam) * b).mean()


# ---------------------------------------------------------------------------- what a method is built from
class DataFacts(NamedTuple):
    """What a method may need to know about the data (it never imports the data modules): the
    training image side in pixels and the normalisation (per-channel mean and std)."""

    image_side: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------- the base model
class MixModel(nn.Module):
    """Shared state and interface of every method's model (module docstring).

    Subclasses set ``name`` (the ``--method`` value), ``HEADS``, ``HEADLINE``, ``has_teacher`` and
    ``uses_segmented_bn`` (the fused step converts BatchNorm to SegmentedBatchNorm2d for batched
    passes), and implement ``sample_plan`` and ``step_losses``.
    """

    # --- what the registry, the config and the CLI read (methods/options.py). A class that sets
    # ``name`` in its own body is a method; one that does not (PairMix) is a shared base.
    name: Optional[str] = None      # the --method value
    title = ""                      # the name in tables and the run summary ("MixUp")
    summary = ""                    # one line for the methods table of the docs
    rank = 100                      # position in listings (the paper's order; new methods after)
    options: tuple[Option, ...] = ()            # the method's own settings (inherited ones too)
    excluded_options: tuple[str, ...] = ()      # inherited options this method's step does not use
    # The engine settings the constructor receives besides arch, num_classes and cifar_stem (and
    # each option under its ``keyword``): lambda's concentration, label smoothing, the trunk's
    # stochastic depth; a method that needs another (AdAutoMix: seed) adds it.
    engine_settings: tuple[str, ...] = ("mix_alpha", "label_smoothing", "drop_path")
    defaults: dict[str, dict[str, Any]] = {}    # published settings per data-set family
    uses_mix_alpha = True           # lambda is drawn from Beta(mix_alpha, mix_alpha)

    HEADS: tuple[str, ...] = ("student_one",)
    HEADLINE = "student_one"
    has_teacher = False
    uses_segmented_bn = False
    # The plan needs host work (``complete_plan``: OpenCV saliency, graph cuts): the fused step
    # draws it before its graph instead of inside it.
    plan_outside_graph = False

    def __init__(self):
        super().__init__()
        # Optimizer steps taken so far (on the device and in the state dict, so a resumed run
        # continues every step-dependent choice exactly).
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def device(self) -> torch.device:
        return self.num_updates.device

    def register_pixel_stats(self, mean, std) -> None:
        """The data set's normalisation as fp32 buffers ``pixel_mean``/``pixel_std`` [1, C, 1, 1]
        (not saved), for a method that works on pixels in [0, 1] (``to_pixels``)."""
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images back to fp32 pixels in [0, 1] (``register_pixel_stats``)."""
        return x.float() * self.pixel_std + self.pixel_mean

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """fp32 pixels in [0, 1] normalised as the network's inputs."""
        return (pixels - self.pixel_mean) / self.pixel_std

    # ------------------------------------------------------------------ self-description
    @classmethod
    def all_options(cls) -> tuple[Option, ...]:
        """The options of this method and of the methods it is built on, base classes first."""
        seen: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            for option in vars(klass).get("options", ()):
                seen[option.name] = option
        return tuple(o for name, o in seen.items() if name not in cls.excluded_options)

    @classmethod
    def from_config(cls, cfg, num_classes: int, cifar_stem: bool, data: Optional[DataFacts] = None) -> "MixModel":
        """The model of a run config (``registry.build_model`` passes the run's ``data``)."""
        return cls(cfg.arch, num_classes, cifar_stem=cifar_stem, **cls.settings_from_config(cfg, data))

    @classmethod
    def settings_from_config(cls, cfg, data: Optional[DataFacts] = None) -> dict[str, Any]:
        """The constructor's keywords from a run config: ``engine_settings`` (lambda's
        concentration as resolved for the method, the architecture's drop-path rate unless set)
        and every option under its ``keyword``, completed by ``complete_settings``. Every method
        is built through here: the CLI, ``api.mix_model`` (from the published settings) and the
        evaluation."""
        engine = {"mix_alpha": cls.run_mix_alpha(cfg), "drop_path": drop_path_rate(cfg.arch, cfg.drop_path)}
        values = {name: engine[name] if name in engine else getattr(cfg, name) for name in cls.engine_settings}
        values.update({o.keyword: getattr(cfg, o.name) for o in cls.all_options() if o.keyword})
        return cls.complete_settings(values, data)

    @classmethod
    def complete_settings(cls, values: dict[str, Any], data: Optional[DataFacts]) -> dict[str, Any]:
        """Fill in the settings that depend on the data (an option left unset meaning "the
        published value for the image size"); most methods take them as they are."""
        return values

    @classmethod
    def published_defaults(cls, family: str, arch: str) -> dict[str, Any]:
        """The method's published settings for a data-set family (``arch``: for the rules that
        also depend on the trunk, e.g. ImageNet ResNet-18's smaller cutting concentration)."""
        return dict(cls.defaults[family])

    @classmethod
    def run_mix_alpha(cls, cfg) -> float:
        """The run's Beta concentration: ``--mix-alpha`` as resolved from the method's published
        defaults. A config built without resolution (``Config(method=...)``) has none: then the
        method's published value for small images, never a silent constant."""
        if cfg.mix_alpha is not None:
            return float(cfg.mix_alpha)
        return float(cls.published_defaults("cifar", cfg.arch).get("mix_alpha", 1.0))

    @classmethod
    def check_config(cls, cfg, image_side: int) -> None:
        """One-line UsageErrors for combinations this method cannot run (beyond each option's own
        range, which the config checks); ``image_side``: the training image size in pixels."""

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        """The method's settings for the run summary, e.g. "Beta(0.2)"."""
        return f"Beta({cfg.mix_alpha:g})" if cls.uses_mix_alpha else ""

    @classmethod
    def missing_requirement(cls) -> Optional[str]:
        """Why this method cannot run in this environment (an optional package it needs is not
        installed: the one-line message naming the install command), or None."""
        return None

    # ------------------------------------------------------------------ the step
    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> NamedTuple:
        """``n``: images mixed this step (methods that vary it); ``image_size``: (H, W) of the
        batch, for plans drawn in pixels (boxes, Fourier masks)."""
        raise NotImplementedError

    def pixels(self, image_size: Optional[tuple[int, int]]) -> tuple[int, int]:
        """(H, W) for a plan drawn in pixels (boxes, masks), or a ValueError naming the argument."""
        if image_size is None:
            raise ValueError(f"{self.name} plans are drawn in pixels: pass image_size=(H, W) to sample_plan")
        return int(image_size[0]), int(image_size[1])

    def step_losses(self, x: torch.Tensor, y: torch.Tensor, plan) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fused_losses(self, x: torch.Tensor, y: torch.Tensor, plan, **options) -> dict[str, torch.Tensor]:
        """The losses as the fused step computes them; the same as ``step_losses`` unless a
        method arranges its passes differently there."""
        return self.step_losses(x, y, plan)

    def forward(self, x: torch.Tensor, y: torch.Tensor, plan) -> dict[str, torch.Tensor]:
        """One step's losses (so that DistributedDataParallel can wrap the whole model)."""
        return self.step_losses(x, y, plan)

    def complete_plan(self, x: torch.Tensor, y: torch.Tensor, plan):
        """Fill in the parts of a plan that depend on the batch (SaliencyMix's box centre); the
        steps call it after ``sample_plan``, outside the fused step's graph for methods with
        ``plan_outside_graph``. Most methods' plans are complete."""
        return plan

    def mix_samples_at(self, step: int) -> Optional[int]:
        """The number of images mixed at global step ``step`` when it varies per step (host-side,
        a pure function of the step so that resume is exact); None when fixed."""
        return None

    def schedule_values(self, step: int, total_steps: int) -> dict[str, float]:
        """Per-step values of the method's own schedules (e.g. AutoMix's mask-loss weight), by the
        name of the 0-dim buffer that holds each; the steps write them before every step."""
        return {}

    @torch.no_grad()
    def set_schedule(self, step: int, total_steps: int) -> None:
        for name, value in self.schedule_values(step, total_steps).items():
            getattr(self, name).fill_(value)   # in place: a compiled or captured step reads the new value

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(student parameters, generator parameters); the teacher is never in the optimizer."""
        gen = getattr(self, "generator", None)
        return list(self.student.parameters()), list(gen.parameters()) if gen is not None else []

    # ------------------------------------------------------------------ evaluation heads
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

    # ------------------------------------------------------------------ pictures and diagnostics
    def mask_diagnostics(self, x: torch.Tensor, y: torch.Tensor, plan) -> Optional[dict[str, float]]:
        """Statistics of the masks a learned generator makes on the batch x for ``plan``
        (``mask_spread``, ``mask_lambda_gap``: `generator.mask_statistics`), computed without
        changing any state; None for methods without a generator (their masks are drawn, not
        learned)."""
        return None

    def visualize(self, x: torch.Tensor, y: torch.Tensor, plan, count: int = 4) -> dict[str, Any]:
        """The mixed samples of one step for the training pictures (computed outside the step,
        without gradients): ``sources`` [N,K,C,H,W], ``masks`` [K,N,H,W] or None, ``mixed``
        [K,C,H,W], ``lam`` [N] or [K,N], ``title``."""
        raise NotImplementedError


__all__ = ["DataFacts", "MixModel", "sample_beta", "random_permutation", "uniform_int", "cross_entropy",
           "pair_mixed_cross_entropy"]
