"""The ``fgsm`` and ``pgd`` suites: white-box l-infinity attacks on the chosen head (Table 4).

``correct`` protocol (default): eval mode; cross-entropy of the chosen head against the true
labels; the gradient is taken with respect to the *pixels* (the de-normalised image), the step
of eps = 8/255 is taken there, the result is clamped to [0, 1] and re-normalised. This is what
torchattacks' ``FGSM``/``PGD`` compute with ``set_normalization_used(mean, std)`` (normalised
images in and out, the attack in pixel space); the tests hold these functions to them.

``official`` protocol: the released tool's computation. The step is taken on the *normalised*
tensor and clamped to [0, 1] there, which sets every below-mean value to 0 (the mean colour) and
makes the real pixel step eps * std (about 1.6/255 on CIFAR). PGD under ``official`` repeats the
same normalised-space steps and clamp: an analogy, since only the released tool's FGSM is known
(docs/evaluation.md, What each suite computes).

Hand-written rather than calling torchattacks because (1) the official protocol cannot be
expressed with it, (2) PGD's random start is drawn from a seeded ``torch.Generator`` here
(torchattacks draws it from the global RNG) and (3) one function serves both protocols, so the
difference between them is the few lines marked below.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def _input_gradient(model: Model, x: torch.Tensor, y: torch.Tensor, to_input: Callable) -> torch.Tensor:
    """d CE(model(to_input(x)), y) / dx, for a leaf copy of x (mean CE over the batch)."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(to_input(x)).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, mean: torch.Tensor, std: torch.Tensor,
         protocol: str = "correct") -> torch.Tensor:
    """One signed-gradient step. x: normalised images [B,3,H,W]; mean, std: [1,3,1,1]; eps in
    pixel units (8/255). Returns the attacked images, normalised [B,3,H,W]."""
    if protocol == "correct":
        x01 = x * std + mean
        grad = _input_gradient(model, x01, y, lambda p: (p - mean) / std)
        adv01 = (x01 + eps * grad.sign()).clamp(0.0, 1.0)
        return ((adv01 - mean) / std).detach()
    # official: step and clamp on the normalised tensor (the released tool's bug).
    grad = _input_gradient(model, x, y, lambda t: t)
    return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


def pgd(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
        mean: torch.Tensor, std: torch.Tensor, protocol: str = "correct", random_start: bool = True,
        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Projected gradient descent: a uniform random start in the eps-ball, then ``steps`` steps of
    ``alpha`` (signed gradient), each projected back onto the eps-ball and [0, 1]. Same
    arguments as ``fgsm``; ``generator`` (on x's device) makes the random start reproducible."""
    if protocol == "correct":
        start = x * std + mean
        to_input = lambda p: (p - mean) / std
    else:  # official: the whole attack on the normalised tensor
        start = x
        to_input = lambda t: t
    start = start.detach()
    adv = start.clone()
    if random_start:
        noise = torch.empty_like(adv).uniform_(-eps, eps, generator=generator)
        adv = (adv + noise).clamp(0.0, 1.0)
    for _ in range(steps):
        grad = _input_gradient(model, adv, y, to_input)
        adv = adv.detach() + alpha * grad.sign()
        delta = (adv - start).clamp(-eps, eps)
        adv = (start + delta).clamp(0.0, 1.0)
    return to_input(adv).detach()


def _attack_suite(ctx, name: str) -> dict:
    opts = ctx.options
    eps, alpha = opts.eps / 255.0, opts.pgd_alpha / 255.0
    generator = torch.Generator(device=ctx.device).manual_seed(opts.seed)
    clean = adv = n = 0
    model = ctx.classifier
    for _, x, y in ctx.batches(name):
        clean += int(ctx.logits(x).argmax(1).eq(y).sum())
        if name == "fgsm":
            x_adv = fgsm(model, x, y, eps, ctx.mean, ctx.std, opts.protocol)
        else:
            x_adv = pgd(model, x, y, eps, alpha, opts.pgd_steps, ctx.mean, ctx.std, opts.protocol,
                        generator=generator)
        adv += int(ctx.logits(x_adv).argmax(1).eq(y).sum())
        n += len(y)
    top1 = 100.0 * adv / max(n, 1)
    result = {"protocol": opts.protocol, "eps": opts.eps, "eps_unit": "1/255", "images": n,
              "clean_top1": 100.0 * clean / max(n, 1), "top1": top1, "error": 100.0 - top1,
              "space": "pixels [0,1]" if opts.protocol == "correct" else "normalised tensor (released tool)"}
    if name == "pgd":
        result.update(steps=opts.pgd_steps, alpha=opts.pgd_alpha, random_start=True, seed=opts.seed)
    return result


def run_fgsm(ctx) -> dict:
    """Top-1 and error (%) of the chosen head on FGSM-attacked test images (eval mode, fp32)."""
    return _attack_suite(ctx, "fgsm")


def run_pgd(ctx) -> dict:
    """Top-1 and error (%) under PGD (10 steps of 2/255 in an 8/255 ball, seeded random start)."""
    return _attack_suite(ctx, "pgd")
