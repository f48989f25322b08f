"""AdAutoMix (or any method of the registry) inside one's own training loop (docs/library.md).

    model = mix_model("adautomix", backbone, num_classes=10)      # any nn.Module, "timm/<name>", "tv/<name>";
                                                                    # family="imagenet" etc.: that family's settings
    optimizer = torch.optim.SGD(param_groups(model), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step = train_step(model, optimizer, total_steps=epochs * len(loader))   # impl="fused": compiled
    for x, y in loader:
        losses = step(x.to(device), y.to(device))                   # both adversarial updates + EMA
    evaluator = classifier(model)                                   # the EMA teacher, logits only

The step reads the learning rates from the optimizer at every call (the student's groups and the
generator's, by each group's ``role``), so one's own LR scheduler, stepped in the loop, rules;
``total_steps`` only paces the EMA teacher's momentum. ``step.state_dict()``,
``model.state_dict()`` and ``optimizer.state_dict()`` are the whole training state (the fused
step draws its in-graph plans from torch's global generator: save its state too for an exact
resume of ``impl="fused"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn

from .config import Config
from .methods.base import DataFacts, MixModel
from .methods.options import FAMILIES
from .models.library import BackboneChoice
from .models.pretrained import export_state_dict
from .registry import METHODS, method_class
from .step.base import TrainStep, make_plan_generator
from .step.fused import FusedStep
from .step.optim import group_role
from .step.precision import Precision
from .step.reference import ReferenceStep
from .step.schedules import ema_momentum

Backbone = Union[str, nn.Module]


# The training image side of each family's published recipes, for the settings that depend on
# it (PuzzleMix's grids) when the caller does not say (``image_size``).
FAMILY_IMAGE_SIDE = {"cifar": 32, "cifar-transformer": 224, "imagenet": 224, "fine-grained": 224}


def published_settings(method: str, family: str = "cifar", backbone: Backbone = None, *,
                       image_size: Optional[int] = None) -> dict:
    """The constructor settings of ``method`` as the engine's CLI resolves them for a data set
    of ``family`` (``cifar``, ``cifar-transformer``, ``imagenet``, ``fine-grained``): the
    method's published values (docs/methods.md), the trunk's own rules where ``backbone`` is an
    engine architecture name (Swin's nearest upsampling, ImageNet R50's generator BatchNorm ...),
    everything else at its declared default."""
    cls = _method(method)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    arch = backbone if isinstance(backbone, str) else None
    values = cls.published_defaults(family, arch)
    cfg = Config(method=method, arch=arch or Config.arch, **values)
    side = image_size or FAMILY_IMAGE_SIDE[family]
    return cls.settings_from_config(cfg, DataFacts(side))


def _method(method: str) -> type[MixModel]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method_class(method)


def mix_model(method: str, backbone: Backbone, num_classes: int, *, family: str = "cifar",
              tap: Optional[int] = None, image_size: Optional[int] = None, **options) -> MixModel:
    """A method's model (student, its heads, and the method's own parts: AdAutoMix's generator and
    EMA teacher) around ``backbone``: an ``nn.Module`` (a timm or torchvision model, or one's own
    of that shape: modules run in order, a global pooling, a last ``nn.Linear`` that the two heads
    replace), a name ``timm/<name>`` / ``tv/<name>``, or one of the engine's ``--arch`` names.

    Its settings are the method's published ones for ``family`` (``published_settings``: the same
    values the CLI resolves for a data set of that family); ``options`` override any of them by
    constructor keyword (AdAutoMix: ``mix_samples``, ``mix_alpha``, ``beta``, ...; PuzzleMix's
    ``block_num``, ``mean``, ``std``), ``cifar_stem`` chooses the stem. ``tap``: the stage the
    generator reads (default: the one at stride 16). ``image_size``: the training images' side
    (default: the family's, 32 or 224), for the settings that depend on it."""
    cls = _method(method)
    settings = published_settings(method, family, backbone, image_size=image_size)
    unknown = set(options) - set(settings) - {"cifar_stem"}
    if unknown:
        raise TypeError(f"mix_model({method!r}): unknown settings {sorted(unknown)}; {method} takes "
                        f"{', '.join(sorted(settings))} and cifar_stem")
    settings.update(options)
    arch = BackboneChoice(backbone, tap=tap) if tap is not None else backbone
    return cls(arch, num_classes, cifar_stem=settings.pop("cifar_stem", False), **settings)


def param_groups(model: MixModel, gen_lr: Optional[float] = None) -> list[dict]:
    """The trained parameters as optimizer groups: the student's (``role`` "student") and the
    generator's (``role`` "generator", with ``gen_lr`` when given). Pass them to any
    ``torch.optim`` optimizer; the fused step supports SGD and AdamW."""
    student, generator = model.trainable_parameters()
    groups = [{"params": student, "role": "student"}]
    if generator:
        groups.append(dict({"params": generator, "role": "generator"}, **({"lr": gen_lr} if gen_lr else {})))
    return groups


@dataclass
class LoopSchedule:
    """The step's schedule in one's own loop: the optimizer's current learning rates (one per
    role) and the EMA momentum over ``total_steps`` (the released cosine from ``ema_start``)."""

    optimizer: torch.optim.Optimizer
    total_steps: int
    ema_start: float = 0.999
    ema_end: float = 0.999999
    ema_warmup: float = 0.1

    def lrs(self, step: int) -> tuple[float, float]:
        by_role = {}
        for group in self.optimizer.param_groups:
            by_role.setdefault(group_role(group), group["lr"])
        student = by_role.get("student", 0.0)
        return student, by_role.get("generator", student)

    def ema(self, step: int) -> float:
        return ema_momentum(step, self.total_steps, self.ema_start, self.ema_end, self.ema_warmup)


def train_step(model: MixModel, optimizer: torch.optim.Optimizer, *, total_steps: int, impl: str = "reference",
               amp: Optional[str] = None, channels_last: bool = False, seed: int = 0,
               clip_grad: Optional[float] = None, ema_start: float = 0.999, ema_end: float = 0.999999,
               compile_mode: Optional[str] = None, compile_backend: str = "inductor") -> TrainStep:
    """A train step for ``model`` (on its device) and one's own ``optimizer``: ``step(x, y)``
    runs one whole step of the method (AdAutoMix: the generator's adversarial update, the
    student's, the EMA teacher) and returns the detached loss terms.

    ``impl``: "reference" (eager) or "fused" (one ``torch.compile`` graph; on CUDA captured as a
    CUDA graph with ``compile_mode`` "reduce-overhead", the default there; ``compile_backend``
    "aot_eager" traces the one-graph step without generating code, as the CLI's
    ``--compile-backend``). ``amp``: None (fp32), "bf16" or "fp16" (with loss scaling)."""
    if impl not in ("reference", "fused"):
        raise ValueError(f"impl must be 'reference' or 'fused', got {impl!r}")
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    device = model.device
    dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    precision = Precision(device.type, dtype, "library call", None)
    schedule = LoopSchedule(optimizer, total_steps, ema_start, ema_end)
    plans = make_plan_generator(device, seed)
    if impl == "fused":
        return FusedStep(model, optimizer, schedule, precision, channels_last=channels_last, mode=compile_mode,
                         backend=compile_backend, plan_generator=plans, max_grad_norm=clip_grad)
    return ReferenceStep(model, optimizer, schedule, precision, channels_last=channels_last,
                         plan_generator=plans, max_grad_norm=clip_grad)


class PlainClassifier(nn.Module):
    """A trained network as a plain classifier: ``forward(x)`` returns the clean head's logits
    (it shares the network's parameters; ``export()`` gives the library's state dict)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, tuple) else out

    def export(self) -> dict[str, torch.Tensor]:
        return export_state_dict(self.network)


def classifier(model: MixModel) -> PlainClassifier:
    """The network to evaluate and export: the EMA teacher when the method has one, else the
    student (the headline of the engine's runs)."""
    return PlainClassifier(model.teacher if model.has_teacher else model.student)


__all__ = ["FAMILY_IMAGE_SIDE", "LoopSchedule", "PlainClassifier", "classifier", "mix_model", "param_groups",
           "published_settings", "train_step"]
