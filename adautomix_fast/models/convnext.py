"""ConvNeXt classifiers (torchvision ``ConvNeXt``) with the stage-3 tap and the CIFAR stem.

Stages on torchvision's ``features`` (downsampling at the start of stages 2-4, as both
torchvision and the released mmcls-style ConvNeXt do):

    stage 0: features[0]                 stem (4x4/4 conv + LayerNorm2d; CIFAR: 3x3/1)
    stage 1: features[1]                 blocks
    stage 2: features[2], features[3]    downsample, blocks
    stage 3: features[4], features[5]    downsample, blocks          <- tap (384 ch)
    stage 4: features[6], features[7]    downsample, blocks

The tap is stage 3's output as it is (the released ``out_indices=(2, 3)`` applies no norm to
index 2), so ``tap_features`` is the identity. Pooling is the released ``gap_before_final_norm``
= torchvision's head: average pool, then LayerNorm2d (kept as ``classifier.0`` so the state dict
keeps torchvision's keys; the heads replace ``classifier.2``).

The CIFAR stem (the released ``ConvNeXt_CIFAR``): a 3x3 stride-1 convolution with bias, then
the same LayerNorm2d, so 32 px images give a 8x8 tap.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from .base import Classifier
from .specs import arch_spec

_STAGE_FEATURES = ((0,), (1,), (2, 3), (4, 5), (6, 7))


def build_convnext(arch: str, drop_path: float) -> ConvNeXt:
    spec = arch_spec(arch)
    if spec.options:   # test variants: torchvision's class with narrow settings
        ch, depths = spec.options["channels"], spec.options["depths"]
        setting = [CNBlockConfig(ch[i], ch[i + 1] if i + 1 < len(ch) else None, depths[i]) for i in range(len(ch))]
        return ConvNeXt(setting, stochastic_depth_prob=drop_path)
    return torchvision.models.convnext_tiny(weights=None, stochastic_depth_prob=drop_path)


def cifar_stem_conv(width: int) -> nn.Conv2d:
    """The released ConvNeXt_CIFAR stem convolution, initialised as torchvision's ConvNeXt
    initialises its convolutions (truncated normal std 0.02, zero bias)."""
    conv = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1)
    nn.init.trunc_normal_(conv.weight, std=0.02)
    nn.init.zeros_(conv.bias)
    return conv


class ConvNeXtClassifier(Classifier):
    """torchvision ConvNeXt trunk (``features``, ``classifier.0``: its keys) + two heads.

    ``drop_path``: stochastic depth rate rising linearly over the blocks (torchvision's rule, the
    released ``drop_path_rate``); 0 by default (the run config passes the recipe's).
    """

    @classmethod
    def library_model(cls, arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
        """torchvision's ConvNeXt (with the released 3x3/1 CIFAR stem when asked) and a fresh
        ``classifier.2``."""
        net = build_convnext(arch, 0.0)
        if cifar_stem:
            net.features[0][0] = cifar_stem_conv(net.features[0][0].out_channels)
        net.classifier[2] = nn.Linear(net.classifier[2].in_features, num_classes)
        return net

    def __init__(self, arch: str, num_classes: int, cifar_stem: bool, drop_path: float = 0.0,
                 mix_head: bool = True):
        super().__init__()
        self.arch = arch
        self.spec = arch_spec(arch)
        self._check_stem(cifar_stem)
        self.cifar_stem = cifar_stem
        net = build_convnext(arch, drop_path)
        if cifar_stem:
            net.features[0][0] = cifar_stem_conv(net.features[0][0].out_channels)
        self.features = net.features
        self.avgpool = net.avgpool
        # classifier.0 (LayerNorm2d) and classifier.1 (Flatten); classifier.2 became the heads.
        self.classifier = nn.Sequential(net.classifier[0], net.classifier[1])
        self.stage3_channels = self.features[5][-1].block[0].in_channels
        self.feature_dim = net.classifier[2].in_features
        self._make_heads(num_classes, trunc_normal=True, mix_head=mix_head)

    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        for j in _STAGE_FEATURES[i]:
            h = self.features[j](h)
        return h

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Last map -> average pool -> LayerNorm2d -> [B, feature_dim]."""
        return self.classifier(self.avgpool(h))

    def cam_target(self) -> nn.Module:
        """The last ConvNeXt block (output [B, C, h, w])."""
        return self.features[7][-1]
