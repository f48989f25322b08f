"""ME-ADA's generation pass (Zhao et al., "Maximum-Entropy Adversarial Data Augmentation for
Improved Generalization and Robustness", NeurIPS 2020): the input ascent that turns a batch of
training images into the adversarial images appended to the training set.

Source: github.com/garyzhao/ME-ADA at b02ccb6dde9108e2e6ff3a7dabbc8c64530ecf6e, ``model_cifar.py``
(``ModelMEADA.maximize``), ``common/utils.py`` (``entropy_loss``), ``run_main_cifar10.sh``. With the
network in eval mode and no augmentation, 15 plain SGD steps on the input (learning rate 20, no
sign, no projection, no clamping inside the loop) maximise

    CE(f(x'), y) + eta * H(softmax f(x')) - gamma * MSE(phi(x'), phi(x))

(eta 10, gamma 1; phi: the penultimate features); the result is denormalised, clamped to [0, 1]
and truncated to uint8 (torchvision's ``ToPILImage``; ``run.phase.to_uint8_hwc``) before it joins the
training set.

The official inputs are normalised to [-1, 1] (mean 0.5, std 0.5 per channel); the engine's
are (p - mean) / std with the data set's statistics. The same step in pixel space is a per-channel
step of lr * (0.5 / std)^2 in the engine's space (``engine_step_size``): a gradient in x' is the
gradient in x times dx/dx' = 0.5 / std, and a step in x' moves x by 0.5 / std times as much.

The method (``--method meada``): vanilla's step (cross-entropy on the clean batch; the official
training loss) on a training set that grows. It declares an epoch-start phase (``phase_epochs``,
``phase_batch``): at the start of epochs T_min, 2 T_min, ... (1-based; the official
``(epoch + 1) % epochs_min == 0``), K times, the trainer passes the whole current training set
(the images appended before included) through ``phase_batch`` in order, without augmentation,
and appends the results (run/phase.py: the bank of appended images, kept in the checkpoint).
The generation pass runs outside the training step, so both step implementations train ME-ADA
alike; it runs in float32 whatever the step's precision.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .base import DataFacts
from .options import Option
from .pairmix import pair_defaults
from .vanilla import Vanilla

OFFICIAL_STEP = 20.0      # lr_max in [-1, 1] inputs
OFFICIAL_STD = 0.5
STEPS = 15                # loops_adv
ETA = 10.0                # run_main_cifar10.sh
GAMMA = 1.0


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of the predictive entropy H(softmax(z))."""
    return -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def meada_objective(logits: torch.Tensor, features: torch.Tensor, clean_features: torch.Tensor, y: torch.Tensor,
                    eta: float = ETA, gamma: float = GAMMA) -> torch.Tensor:
    """What the ascent maximises: CE + eta * entropy - gamma * MSE(features, clean features)."""
    return F.cross_entropy(logits, y) + eta * entropy(logits) - gamma * F.mse_loss(features, clean_features)


def engine_step_size(std: tuple[float, ...], official: float = OFFICIAL_STEP) -> torch.Tensor:
    """[C]: the official step (in [-1, 1] inputs) as a per-channel step in inputs normalised by
    ``std`` (module docstring)."""
    return official * (OFFICIAL_STD / torch.tensor(std, dtype=torch.float64)) ** 2


def ascend(classify: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
           step_size: torch.Tensor, steps: int = STEPS, eta: float = ETA, gamma: float = GAMMA) -> torch.Tensor:
    """The adversarial batch: ``steps`` plain gradient-ascent steps on the input of the ME-ADA
    objective. ``classify(x) -> (logits, penultimate features)``, called with the network in eval
    mode (the caller's); ``step_size``: [C] per-channel steps in ``x``'s normalisation."""
    with torch.no_grad():
        _, clean = classify(x)
    step = step_size.to(x.device, x.dtype).view(1, -1, 1, 1)
    x_adv = x.detach().clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits, features = classify(x_adv)
        objective = meada_objective(logits, features, clean, y, eta, gamma)
        (grad,) = torch.autograd.grad(objective, x_adv)
        x_adv = (x_adv + step * grad).detach()
    return x_adv


def phase_epochs(every: int, rounds: int, epochs: int) -> tuple[int, ...]:
    """The 0-based epochs at whose start a generation round runs: the first ``rounds`` epochs e
    of the run with (e + 1) % every == 0 (the official condition)."""
    return tuple(e for e in range(epochs) if (e + 1) % every == 0)[:rounds]


class MEADA(Vanilla):
    """ME-ADA: cross-entropy on a training set that grows by its adversarial images (module
    docstring)."""

    name = "meada"
    title = "ME-ADA"
    summary = "cross-entropy; the training set perturbed by entropy-maximising ascent and appended at epochs 10, 20"
    rank = 22
    defaults = {family: dict(values) for family, values in pair_defaults(
        cifar=None, cifar_transformer=None, imagenet=None, fine_grained=None).items()}
    options = (
        Option("meada_every", int, 10, low=1, param="every",
               help="ME-ADA's T_min: a generation round at the start of every T_min-th epoch (counted from 1)"),
        Option("meada_rounds", int, 2, low=0, param="rounds",
               help="ME-ADA's K: how many generation rounds (each doubles the training set)"),
        Option("meada_steps", int, STEPS, low=1, param="steps", help="gradient-ascent steps per image"),
        Option("meada_lr", float, OFFICIAL_STEP, low=0, open_low=True, param="step_size",
               help="the ascent's step size in the official [-1, 1] inputs (rescaled for the data set's std)"),
        Option("meada_eta", float, ETA, low=0, param="eta", help="weight of the predictive entropy in the ascent"),
        Option("meada_gamma", float, GAMMA, low=0, param="gamma",
               help="weight of the penultimate-feature distance to the clean image in the ascent"),
    )
    # The trainer appends one image per image of the current set at each round.
    phase_growth = 2

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, every: int = 10, rounds: int = 2,
                 steps: int = STEPS, step_size: float = OFFICIAL_STEP, eta: float = ETA, gamma: float = GAMMA,
                 std: tuple[float, ...] = (OFFICIAL_STD,) * 3, **kwargs):
        super().__init__(arch, num_classes, cifar_stem=cifar_stem, **kwargs)
        self.every, self.rounds, self.steps = int(every), int(rounds), int(steps)
        self.eta, self.gamma = float(eta), float(gamma)
        self.register_buffer("step_sizes", engine_step_size(tuple(std), float(step_size)).float(), persistent=False)

    @classmethod
    def complete_settings(cls, values: dict, data: Optional[DataFacts]) -> dict:
        """The data set's std, which turns the official step into the engine's (``engine_step_size``)."""
        return dict(values, std=data.std) if data is not None else values

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        rounds = phase_epochs(cfg.meada_every, cfg.meada_rounds, cfg.epochs)
        when = ("no generation round within the run" if not rounds
                else "generation at the start of epoch" + ("s " if len(rounds) > 1 else " ")
                + ", ".join(str(e + 1) for e in rounds))
        return (f"{when} ({cfg.meada_steps} ascent steps of {cfg.meada_lr:g}, eta {cfg.meada_eta:g}, "
                f"gamma {cfg.meada_gamma:g})")

    def phase_epochs(self, epochs: int) -> tuple[int, ...]:
        """The 0-based epochs at whose start the trainer runs the generation pass."""
        return phase_epochs(self.every, self.rounds, epochs)

    def phase_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial images of a batch of normalised training images (no augmentation),
        float32, with the student in eval mode (the caller's); the weights are not changed."""
        def classify(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.student.pooled(z)
            return self.student.head_one(features), features

        return ascend(classify, x.float(), y, self.step_sizes, self.steps, self.eta, self.gamma)


__all__ = ["ETA", "GAMMA", "MEADA", "OFFICIAL_STEP", "STEPS", "ascend", "engine_step_size", "entropy",
           "meada_objective", "phase_epochs"]
