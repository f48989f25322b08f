"""Swin Transformer classifiers (torchvision ``SwinTransformer``) with the released tap.

torchvision's Swin keeps its activations NHWC and merges patches at the *start* of stages 2-4;
the released implementation (OpenMixup's mmcls-style Swin, ``out_indices=(2, 3)``) merges at the
*end* of stages 1-3. The stages here follow the released split, on torchvision's modules:

    stage 0: features[0]                 patch embedding (4x4 conv, LayerNorm)
    stage 1: features[1], features[2]    blocks, patch merging 1
    stage 2: features[3], features[4]    blocks, patch merging 2
    stage 3: features[5], features[6]    blocks, patch merging 3      <- tap (768 ch, 7x7 at 224)
    stage 4: features[7], norm           blocks, final LayerNorm

Stage boundaries are NCHW-shaped views of the NHWC activations (``permute(0, 3, 1, 2)``: a
channels-last tensor, no copy), so every boundary is a [B, C, h, w] tensor.

The generator's input. The released backbone returns ``norm2(x)`` for its out index 2, a
LayerNorm of the merged map, while stage 4 continues from ``x`` itself. That ``norm2`` never
gets a gradient (the student's copy feeds nothing that is trained; the teacher's is an EMA of
it), so it stays at its initialisation (weight 1, bias 0) for the whole run: a LayerNorm
without affine parameters, which is what ``tap_features`` applies (eps 1e-5, mmcv's LN). The
step must therefore feed the generator ``tap_features(stem_to_stage3(x))`` and the trunk the
state itself (``stage3_to_pooled``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.swin_transformer import SwinTransformer

from .base import Classifier
from .specs import arch_spec

TAP_NORM_EPS = 1e-5

# Indices into torchvision's ``features`` run by each stage (the released stage split).
_STAGE_FEATURES = ((0,), (1, 2), (3, 4), (5, 6), (7,))


def build_swin(arch: str, drop_path: float) -> SwinTransformer:
    """torchvision's SwinTransformer with the settings of ``arch_spec(arch)`` (swin_t's own for "swin_t": its
    builder fixes stochastic_depth_prob at 0.2, so the class is called directly)."""
    return SwinTransformer(**arch_spec(arch).options, stochastic_depth_prob=drop_path)


class SwinClassifier(Classifier):
    """torchvision Swin trunk (``features``, ``norm``: its state-dict keys) + two heads.

    ``drop_path``: stochastic depth rate, rising linearly over the blocks (torchvision's rule,
    the released ``drop_path_rate``); 0 by default (the run config passes the recipe's).
    """

    @classmethod
    def library_model(cls, arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
        """torchvision's Swin with a fresh ``head`` (Swin has no CIFAR stem)."""
        net = build_swin(arch, 0.0)
        net.head = nn.Linear(net.head.in_features, num_classes)
        return net

    def __init__(self, arch: str, num_classes: int, cifar_stem: bool = False, drop_path: float = 0.0,
                 mix_head: bool = True):
        super().__init__()
        self.arch = arch
        self.spec = arch_spec(arch)
        self._check_stem(cifar_stem)
        self.cifar_stem = False
        net = build_swin(arch, drop_path)
        self.features = net.features
        self.norm = net.norm
        self.stage3_channels = self.features[6].reduction.out_features   # after merging 3
        self.feature_dim = net.head.in_features
        self._make_heads(num_classes, trunc_normal=True, mix_head=mix_head)

    @staticmethod
    def _nhwc(h: torch.Tensor) -> torch.Tensor:
        return h.permute(0, 2, 3, 1)

    @staticmethod
    def _nchw(h: torch.Tensor) -> torch.Tensor:
        return h.permute(0, 3, 1, 2)

    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i > 0:
            h = self._nhwc(h)
        for j in _STAGE_FEATURES[i]:
            h = self.features[j](h)
        if i == self.num_stages - 1:
            h = self.norm(h)
        return self._nchw(h)

    def tap_features(self, state: torch.Tensor) -> torch.Tensor:
        """[B, 768, 7, 7] merged map -> its LayerNorm over channels (no affine), as released."""
        c = state.shape[1]
        return self._nchw(F.layer_norm(self._nhwc(state), (c,), eps=TAP_NORM_EPS))

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Normed last map [B, C, h, w] -> [B, C] (torchvision: permute, avgpool, flatten)."""
        return h.mean(dim=(2, 3))

    def cam_target(self) -> nn.Module:
        """The last Swin block. Its output is NHWC [B, h, w, C]: ``cam_map`` permutes it (and its
        gradient) to [B, C, h, w]."""
        return self.features[7][-1]

    def cam_map(self, activation: torch.Tensor) -> torch.Tensor:
        return self._nchw(activation)
