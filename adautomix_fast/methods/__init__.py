"""Training methods: AdAutoMix and the paper's baselines, built from a run config.

``build_model(cfg, num_classes, cifar_stem)`` returns the nn.Module that one train step uses
(for AdAutoMix: student, EMA teacher and generator). Every such model derives from
:class:`~adautomix_fast.methods.base.MixModel` and offers the same interface to the engine, the
trainer and the evaluation tools:

* ``sample_plan(batch_size, generator=None, n=None)`` and ``step_losses(x, y, plan)`` (a dict with
  ``loss`` and every logged term), ``fused_losses`` for the fused arrangement;
* ``HEADS`` (evaluation heads, "<network>_<head>"), ``HEADLINE`` (the head the paper reports),
  ``eval_logits(x, heads=None) -> {head: logits}`` and ``head_network(head) -> (network, attr)``;
* ``trainable_parameters()``, and ``ema_pairs()`` / ``update_teacher(m)`` when ``has_teacher``;
* ``visualize(x, y, plan)``: the mixed samples of a step, for the training pictures.

Adding a method is one module under ``methods/`` with its model class (plan and losses) and one
line in ``METHODS`` below.
"""

from __future__ import annotations

import importlib

# --method value -> "module:class" (imported on first use: adautomix_fast.adautomix imports
# methods.base, so this package must not import it at load time).
METHODS: dict[str, str] = {
    "adautomix": "adautomix_fast.adautomix:AdAutoMix",
    "automix": "adautomix_fast.methods.automix:AutoMix",
    "vanilla": "adautomix_fast.methods.vanilla:Vanilla",
    "mixup": "adautomix_fast.methods.mixup:MixUp",
    "cutmix": "adautomix_fast.methods.cutmix:CutMix",
    "manifoldmix": "adautomix_fast.methods.manifoldmix:ManifoldMix",
    "fmix": "adautomix_fast.methods.fmix:FMix",
    "resizemix": "adautomix_fast.methods.resizemix:ResizeMix",
    "saliencymix": "adautomix_fast.methods.saliencymix:SaliencyMix",
    "puzzlemix": "adautomix_fast.methods.puzzlemix:PuzzleMix",
}


def method_class(name: str):
    """The model class of method ``name``."""
    if name not in METHODS:
        from ..errors import UsageError
        raise UsageError(f"unknown --method {name!r}; choose one of {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(cfg, num_classes: int, cifar_stem: bool):
    """The model of the run's method (``cfg.method``), on the CPU, freshly initialised."""
    return method_class(getattr(cfg, "method", "adautomix")).from_config(cfg, num_classes, cifar_stem)


__all__ = ["METHODS", "build_model", "method_class"]
