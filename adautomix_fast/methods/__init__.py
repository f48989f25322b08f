"""Training methods: AdAutoMix and the paper's baselines, built from a run config.

``build_model(cfg, num_classes, cifar_stem)`` returns the nn.Module that one train step uses
(for AdAutoMix: student, EMA teacher and generator). Every such model offers the same interface
to the engine, the trainer and the evaluation tools:

* ``sample_plan(batch_size, generator=None)`` and ``step_losses(x, y, plan)`` (a dict with
  ``loss`` and every logged term);
* ``HEADS`` (evaluation heads, "<network>_<head>"), ``HEADLINE`` (the head the paper reports),
  ``eval_logits(x, heads=None) -> {head: logits}`` and ``head_network(head) -> (network, attr)``;
* ``trainable_parameters()``, and ``ema_pairs()`` / ``update_teacher(m)`` when it has a teacher.
"""

from __future__ import annotations

from ..adautomix import AdAutoMix


def build_model(cfg, num_classes: int, cifar_stem: bool):
    """The model of the run's method (today AdAutoMix), on the CPU, freshly initialised."""
    return AdAutoMix.from_config(cfg, num_classes, cifar_stem)


__all__ = ["build_model", "AdAutoMix"]
