"""ME-ADA's generation pass (Zhao et al., "Maximum-Entropy Adversarial Data Augmentation for
Improved Generalization and Robustness", NeurIPS 2020): the input ascent that turns a batch of
training images into the adversarial images appended to the training set.

Source: github.com/garyzhao/ME-ADA at b02ccb6dde9108e2e6ff3a7dabbc8c64530ecf6e, ``model_cifar.py``
(``ModelMEADA.maximize``), ``common/utils.py`` (``entropy_loss``), ``run_main_cifar10.sh``. With the
network in eval mode and no augmentation, 15 plain SGD steps on the input (learning rate 20, no
sign, no projection, no clamping inside the loop) maximise

    CE(f(x'), y) + eta * H(softmax f(x')) - gamma * MSE(phi(x'), phi(x))

(eta 10, gamma 1; phi: the penultimate features); the result is denormalised, clamped to [0, 1]
and truncated to uint8 (torchvision's ``ToPILImage``) before it joins the training set.

The official inputs are normalised to [-1, 1] (mean 0.5, std 0.5 per channel); the engine's
are (p - mean) / std with the data set's statistics. The same step in pixel space is a per-channel
step of lr * (0.5 / std)^2 in the engine's space (``engine_step_size``): a gradient in x' is the
gradient in x times dx/dx' = 0.5 / std, and a step in x' moves x by 0.5 / std times as much.

This module is the generation pass only: the ME-ADA method (the epoch-start phase at epochs 10 and
20 and the resumable bank of appended images) is not built yet (docs/methods.md, Table 11).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

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


def to_uint8(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised images [B,C,H,W] as the uint8 images the official code stores: denormalised,
    clamped to [0, 1], times 255 and truncated."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0.0, 1.0).mul(255).to(torch.uint8)


__all__ = ["ETA", "GAMMA", "OFFICIAL_STEP", "STEPS", "ascend", "engine_step_size", "entropy", "meada_objective",
           "to_uint8"]
