"""DADA (Li et al., "DADA: Differentiable Automatic Data Augmentation", ECCV 2020) as a row of a
comparison: plain training (cross-entropy on the clean batch, as ``vanilla``) with DADA's published
searched policy for the data set, which the data pipeline applies (``--augment dada``:
``data/dada.py``, the policies, the operations and their differences from DADA's code).

The method itself mixes nothing: its published settings set the data-side augmentation, so
``--method dada`` and ``compare --methods ...,dada`` train the paper's Table 11 "DADA" row, and
``--augment dada`` gives the same policy to any other method.
"""

from __future__ import annotations

from .pairmix import pair_defaults
from .vanilla import Vanilla


class DADA(Vanilla):
    name = "dada"
    title = "DADA"
    summary = "cross-entropy with DADA's searched augmentation policy (--augment dada), no mixing"
    rank = 21
    defaults = {family: dict(values, augment="dada")
                for family, values in pair_defaults(cifar=None, cifar_transformer=None, imagenet=None,
                                                    fine_grained=None).items()}


__all__ = ["DADA"]
