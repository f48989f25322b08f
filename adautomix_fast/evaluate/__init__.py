"""Evaluation: the per-epoch top-1/top-5 of the trainer, and the paper's evaluation suite.

``evaluate``, ``topk_correct``, ``HEADS`` and ``HEADLINE`` are what the trainer uses (top-1/top-5
of every head, every epoch). ``python -m adautomix_fast.evaluate RUN --suite ...`` runs the
paper's suite on a checkpoint (docs/evaluation.md): one module per suite (``accuracy``,
``calibration``, ``attacks`` (fgsm, pgd), ``corruption``, ``occlusion``, ``cam``), with ``context``
(checkpoint, head, data), ``plots``, ``report``, ``compare`` and ``cli`` around them.

Pictures made during training (functions the trainer calls): ``mixvis.render_mix_grid`` (mixed
samples, masks, lambdas), ``curves.render_training_curves`` (summary.csv as curves) and
``tblog.ScalarLogger`` (the ``--tensorboard`` log).

Only the accuracy module is imported here, so that importing the trainer stays light (the suite
modules import matplotlib, torchmetrics, grad-cam and imagecorruptions on first use).
"""

from .accuracy import HEADLINE, HEADS, evaluate, topk_correct

__all__ = ["evaluate", "topk_correct", "HEADS", "HEADLINE"]
