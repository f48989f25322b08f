"""SaliencyMix (Uddin et al. 2021): CutMix whose box is centred on the most salient pixel.

As OpenMixup's ``augments/saliencymix.py``: one box for the batch, of CutMix's size for the
drawn lambda, centred on the argmax of OpenCV's static fine-grained saliency map (uint8-quantised,
first maximum in row-major order) of one image, the partner of sample 0 (``x[perm[0]]``, the
normalised tensor as an HWC float32 array); lambda is recomputed from the clipped box.

The saliency map comes from OpenCV's contrib module (``cv2.saliency``, package
opencv-contrib-python-headless) and is computed on the CPU, so this method's plan is completed
outside the fused step's graph (``plan_outside_graph``): one image per step is copied to the
host. Everything else (mixing, loss, update) stays in the graph.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import UsageError
from .base import random_permutation
from .cutmix import BoxPlan, CutMix
from .pairmix import pair_defaults


def _saliency_module():
    try:
        import cv2
    except ImportError:
        raise UsageError("--method saliencymix needs OpenCV with its contrib modules: "
                         "pip install opencv-contrib-python-headless") from None
    if not hasattr(cv2, "saliency"):
        raise UsageError("--method saliencymix needs OpenCV's contrib saliency module (this cv2 has none): "
                         "pip install --force-reinstall --no-deps opencv-contrib-python-headless") from None
    return cv2.saliency


def saliency_peak(image: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the maximum of OpenCV's StaticSaliencyFineGrained map of ``image``
    ([C, H, W], any device), as released: the map of the HWC float32 array, quantised to uint8,
    first maximum in row-major order."""
    array = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    ok, saliency = _saliency_module().StaticSaliencyFineGrained_create().computeSaliency(array)
    if not ok:
        raise RuntimeError("OpenCV could not compute the saliency map")
    quantised = (saliency * 255).astype("uint8")
    row, col = np.unravel_index(np.argmax(quantised, axis=None), quantised.shape)
    return int(row), int(col)


class SaliencyMix(CutMix):
    name = "saliencymix"
    title = "SaliencyMix"
    summary = "CutMix's box centred on the partner's most salient pixel"
    rank = 8
    defaults = pair_defaults(cifar=0.2, cifar_transformer=0.2, imagenet=1.0, fine_grained=0.2)
    plan_outside_graph = True

    @classmethod
    def missing_requirement(cls):
        try:
            _saliency_module()
        except UsageError as exc:
            return str(exc)
        return None

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> BoxPlan:
        # A plain permutation (OpenMixup's saliencymix uses randperm, not the no-repeat draw);
        # the centre is filled in by complete_plan once the images are known.
        lam = self.sample_lam(generator)
        perm = random_permutation(batch_size, generator, self.device)
        return BoxPlan(lam, perm, torch.full((2,), -1, dtype=torch.long, device=self.device))

    def complete_plan(self, x: torch.Tensor, y: torch.Tensor, plan: BoxPlan) -> BoxPlan:
        """The box centre: the saliency peak of x[perm[0]] (a host computation)."""
        row, col = saliency_peak(x[plan.perm[0]])
        return plan._replace(center=torch.tensor([row, col], dtype=torch.long, device=x.device))
