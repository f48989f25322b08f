"""SADA, the single-domain core of the spectral method (Zhang et al., "When Neural Networks Fail
to Generalize? A Model Sensitivity Perspective", AAAI 2023; the basis of "Spectral Adversarial
MixUp", MICCAI 2023, which the AdAutoMix paper's Table 11 cites as SAMix): adversarial
perturbation of the Fourier amplitude with the phase kept, and a Jensen-Shannon consistency
between the clean image and its perturbed views.

Source: github.com/DIAL-RPI/Spectral-Adversarial-Data-Augmentation at 4da77377,
``AAAIcodeSubmissoin__SADA/sada.py`` (``attack_amp``), ``train_test.py`` (the loss) and
``train_SADA.py`` (the settings). The attack, on images in [0, 1]:

* amplitude and phase of ``fft2`` per channel; a random start multiplies each image's DC
  amplitude by U(1, 5) (``randominit_type="normal"``);
* up to 5 steps (``--sada-steps``) amp <- max(amp + 0.08 sign(d CE / d amp) amp, 0): signed,
  multiplicative, no projection (``--sada-step``);
* a sample stops once misclassified (tau 1: its budget of misclassified steps is spent,
  ``--sada-tau``), and the loop ends when every sample has stopped;
* the image |ifft2(amp e^(i phase))| divided by the batch's largest value, then its brightness
  scaled by 1 + U(0, 0.6) (one factor per call) and clamped to [0, 1];
* network in eval mode during the attack.

The loss: cross-entropy on the clean image plus w times the Jensen-Shannon divergence of the
softmax outputs of the clean image and the views (each KL to their mean, clamped to [1e-7, 1],
averaged); w is 10 during the warm-up (no attack) and 0.025 after it. One forward pass per view,
as the official code does (each its own BatchNorm batch).

Differences from the official code (docs/methods.md, SADA): the official views are three AugMix
views of the image, each attacked from its AugMix version; here they are the training batch as
the engine's pipeline augments it (crop and flip), attacked from three random starts (the
engine's loaders yield one view per image). During the warm-up the views are therefore the clean
batch and the consistency term is zero. The official warm-up is the first 6 of 50 epochs; here a
fraction of the steps (``--sada-warmup`` 0.12). The attack runs outside the step's graph
(``plan_outside_graph``), in float32, as PuzzleMix's saliency does.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .base import DataFacts, cross_entropy
from .options import Option
from .pairmix import pair_defaults
from .vanilla import Vanilla

STEP = 0.08
STEPS = 5
TAU = 1
VIEWS = 3
WARMUP_WEIGHT = 10.0
WEIGHT = 0.025
WARMUP = 6 / 50          # warm_up = epoch <= 5 of train_SADA.py's 50 epochs
DC_START = (1.0, 5.0)    # rand * 4 + 1
BRIGHTNESS = 0.6         # adjust_brightness(1 + U(0, 0.6))


def amplitude_phase(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Fourier amplitude and phase of each channel (unshifted ``fft2``: DC at [0, 0])."""
    spectrum = torch.fft.fft2(images)
    return spectrum.abs(), spectrum.angle()


def reconstruct(amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """|ifft2(amp e^(i phase))| divided by its largest value over the whole batch, clamped to [0, 1]."""
    image = torch.fft.ifft2(torch.polar(amp, phase)).abs()
    return (image / image.max()).clamp(0.0, 1.0)


def amplitude_attack(classify: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, y: torch.Tensor,
                     dc_scale: torch.Tensor, brightness: float, step: float = STEP, steps: int = STEPS,
                     tau: int = TAU) -> torch.Tensor:
    """The attacked images in [0, 1] (module docstring). ``classify``: logits of images in
    [0, 1], with the network in eval mode (the caller's); ``dc_scale`` [B, C]: the random start's
    factors of the DC amplitude; ``brightness``: the factor's U(0, 0.6) draw."""
    with torch.no_grad():
        amp, phase = amplitude_phase(pixels)
        amp = amp.clone()
        amp[:, :, 0, 0] = dc_scale * amp[:, :, 0, 0]
    budget = torch.full((pixels.shape[0],), tau, device=pixels.device)
    for _ in range(steps):
        amp.requires_grad_(True)
        logits = classify(reconstruct(amp, phase))
        wrong = logits.argmax(1) != y
        budget = torch.where(wrong & (budget != 0), budget - 1, budget)
        active = budget > 0
        if not bool(active.any()):      # every sample has stopped
            break
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), amp)
        grad = grad * active.view(-1, 1, 1, 1)
        amp = (amp.detach() + step * grad.sign() * amp.detach()).clamp_min(0.0)
    with torch.no_grad():
        return (reconstruct(amp.detach(), phase) * (1.0 + brightness)).clamp(0.0, 1.0)


def js_consistency(logits: list[torch.Tensor]) -> torch.Tensor:
    """The Jensen-Shannon consistency of the official loss: the mean over the outputs of
    KL(p_i || M), M the mean of the softmax outputs clamped to [1e-7, 1] (batch means).

    The KL takes each p_i as log-probabilities (``log_target``): the same value, but where a
    softmax saturates to an exact 0 (logit gaps above ~100, as an attacked view can give early in
    training) the official form's gradient through its target, log p_i, is -inf x 0 = NaN."""
    log_probs = [F.log_softmax(z.float(), dim=1) for z in logits]
    mixture = torch.clamp(sum(lp.exp() for lp in log_probs) / len(log_probs), 1e-7, 1.0).log()
    return sum(F.kl_div(mixture, lp, reduction="batchmean", log_target=True) for lp in log_probs) / len(log_probs)


class SADAPlan(NamedTuple):
    """dc_scale [V, B, C] U(1, 5), brightness [V] U(0, 0.6): the attack's draws per view;
    views [V, B, C, H, W] (normalised) from ``complete_plan``, empty before."""

    dc_scale: torch.Tensor
    brightness: torch.Tensor
    views: torch.Tensor


class SADA(Vanilla):
    """Cross-entropy on the clean batch plus the consistency with its amplitude-attacked views."""

    name = "sada"
    title = "SADA"
    summary = "cross-entropy + JS consistency with Fourier-amplitude adversarial views (the spectral method's core)"
    rank = 23
    defaults = pair_defaults(cifar=None, cifar_transformer=None, imagenet=None, fine_grained=None)
    options = (
        Option("sada_step", float, STEP, low=0, open_low=True, param="step",
               help="the amplitude attack's relative step (amp += step x sign(grad) x amp)"),
        Option("sada_steps", int, STEPS, low=1, param="steps", help="the amplitude attack's most steps"),
        Option("sada_tau", int, TAU, low=1, param="tau",
               help="misclassified steps after which a sample's attack stops (FAT's early stop)"),
        Option("sada_views", int, VIEWS, low=1, param="views", help="attacked views per image"),
        Option("sada_warmup", float, WARMUP, low=0, high=1, param="warmup",
               help="fraction of the steps without attack, the consistency weighted --sada-warmup-weight"),
        Option("sada_weight", float, WEIGHT, low=0, param="weight", help="weight of the consistency after the warm-up"),
        Option("sada_warmup_weight", float, WARMUP_WEIGHT, low=0, param="warmup_weight",
               help="weight of the consistency during the warm-up"),
    )
    plan_outside_graph = True   # the attack: autograd on the amplitude and a data-dependent early stop

    def __init__(self, arch: str, num_classes: int, *, cifar_stem: bool, step: float = STEP, steps: int = STEPS,
                 tau: int = TAU, views: int = VIEWS, warmup: float = WARMUP, weight: float = WEIGHT,
                 warmup_weight: float = WARMUP_WEIGHT, mean: tuple[float, ...] = (0.5,) * 3,
                 std: tuple[float, ...] = (0.5,) * 3, **kwargs):
        super().__init__(arch, num_classes, cifar_stem=cifar_stem, **kwargs)
        self.step, self.steps, self.tau, self.views = float(step), int(steps), int(tau), int(views)
        self.warmup, self.weight, self.warmup_weight = float(warmup), float(weight), float(warmup_weight)
        self.register_pixel_stats(mean, std)
        # The consistency weight of the step (a buffer written before each step: schedule_values).
        self.register_buffer("consistency_weight", torch.tensor(float(warmup_weight)), persistent=False)
        self.attacking = warmup <= 0.0   # host side: set with the schedule, read by complete_plan

    @classmethod
    def complete_settings(cls, values: dict, data: Optional[DataFacts]) -> dict:
        """The data set's normalisation: the attack works on pixels in [0, 1]."""
        return dict(values, mean=data.mean, std=data.std) if data is not None else values

    @classmethod
    def describe(cls, cfg, image_side: int) -> str:
        return (f"{cfg.sada_views} amplitude-attacked views ({cfg.sada_steps} steps of {cfg.sada_step:g}, tau "
                f"{cfg.sada_tau}), consistency {cfg.sada_warmup_weight:g} for the first {cfg.sada_warmup:.0%} of "
                f"the steps (no attack), then {cfg.sada_weight:g}")

    def in_warmup(self, step: int, total_steps: int) -> bool:
        return step < self.warmup * total_steps

    def schedule_values(self, step: int, total_steps: int) -> dict[str, float]:
        warm = self.in_warmup(step, total_steps)
        return {"consistency_weight": self.warmup_weight if warm else self.weight}

    def set_schedule(self, step: int, total_steps: int) -> None:
        super().set_schedule(step, total_steps)
        self.attacking = not self.in_warmup(step, total_steps)

    # ------------------------------------------------------------------ plan
    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> SADAPlan:
        low, high = DC_START
        channels = self.pixel_mean.shape[1]
        dc = torch.rand((self.views, batch_size, channels), generator=generator, device=self.device)
        bright = torch.rand((self.views,), generator=generator, device=self.device)
        return SADAPlan(low + (high - low) * dc, BRIGHTNESS * bright, torch.empty(0, device=self.device))

    def complete_plan(self, x: torch.Tensor, y: torch.Tensor, plan: SADAPlan) -> SADAPlan:
        """The views: after the warm-up, the batch attacked once per view (eval mode, float32,
        no parameter .grad written, every module's train flag restored); before it, the batch."""
        if not self.attacking:   # the same layout as the attacked views: one compiled graph for both
            return plan._replace(views=torch.stack([x.detach()] * self.views))
        net = self.student
        pixels = self.to_pixels(x.detach())

        def classify(images: torch.Tensor) -> torch.Tensor:
            return net.head_one(net.pooled(self.from_pixels(images)))

        modes = [(m, m.training) for m in net.modules()]
        net.eval()
        try:
            with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
                views = [amplitude_attack(classify, pixels, y, plan.dc_scale[v], float(plan.brightness[v]),
                                          self.step, self.steps, self.tau) for v in range(self.views)]
        finally:
            for module, training in modes:
                module.training = training
        normalised = [self.from_pixels(v).to(x.dtype) for v in views]
        if x.is_contiguous(memory_format=torch.channels_last):
            normalised = [v.contiguous(memory_format=torch.channels_last) for v in normalised]
        return plan._replace(views=torch.stack(normalised))

    # ------------------------------------------------------------------ losses
    def step_losses(self, x: torch.Tensor, y: torch.Tensor, plan: SADAPlan) -> dict[str, torch.Tensor]:
        if plan.views.numel() == 0:
            raise ValueError("a SADA plan is used after complete_plan(x, y, plan)")
        clean = self.logits(x, plan)
        loss_ce = cross_entropy(clean, y, self.label_smoothing)
        consistency = js_consistency([clean] + [self.logits(v, plan) for v in plan.views.unbind(0)])
        loss = loss_ce + self.consistency_weight * consistency
        return {"loss": loss, "loss_ce": loss_ce.detach(), "consistency": consistency.detach()}

    @torch.no_grad()
    def visualize(self, x: torch.Tensor, y: torch.Tensor, plan: SADAPlan, count: int = 4) -> dict:
        k = min(count, x.shape[0])
        views = plan.views if plan.views.numel() else x.unsqueeze(0)
        return {"sources": x[None, :k], "masks": None, "mixed": views[0, :k], "lam": torch.ones(1),
                "title": "sada: the first attacked view"}


__all__ = ["SADA", "SADAPlan", "amplitude_attack", "amplitude_phase", "js_consistency", "reconstruct"]
