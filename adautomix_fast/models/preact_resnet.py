"""PreAct-ResNet-18 (``preact_r18``): the CIFAR network of the MixUp-family papers' tables.

He et al.'s pre-activation ResNet (Identity Mappings in Deep Residual Networks, 2016) as the
Manifold Mixup, PuzzleMix and Co-Mixup code releases define ``preactresnet18`` (their
``models/preresnet.py``, one file copied between the three), which their CIFAR and Tiny-ImageNet
tables report: a 3x3 convolution to 64 channels (no norm: each block normalises its own input),
4 stages of 2 pre-activation basic blocks with 64/128/256/512 channels (stride 2 at the start of
stages 2-4), average pooling and one linear layer; 11.17M parameters for 10 classes.

A block is BN - ReLU - conv3x3 (stride) - BN - ReLU - conv3x3, added to the shortcut. Where the
block changes the shape the shortcut is a 1x1 convolution (stride) of the pre-activated input,
otherwise the input itself, as released. Like the released code (and unlike the paper's
ImageNet network) there is no BN-ReLU after the last block: the pooled features are the last
block's sum. The released code pools with ``avg_pool2d(out, 4)``, the whole 4x4 map at 32 px;
the global average pool here is the same there and also runs at other sizes. Initialisation is
PyTorch's default, as released.

Stem: ``cifar_stem`` True is the released stride-1 convolution (CIFAR, 32 px); False the
released stride-2 convolution that PuzzleMix and Co-Mixup use for Tiny-ImageNet (64 px), so the
maps there are those of CIFAR. The automatic choice (64 px or less: CIFAR stem) picks stride 1;
``--no-cifar-stem`` reproduces their Tiny-ImageNet network.

There is no library constructor: :class:`PreActResNet` is the network as a plain module with the
released keys (``conv1``, ``layer1..4`` of blocks ``bn1/conv1/bn2/conv2[/shortcut.0]``,
``linear``), so a state dict of the released code loads here and an export loads into theirs;
``preact_resnet18(num_classes, cifar_stem)`` builds it.

Stages: 0 = stem, 1..4 = layer1..4. The generator taps layer3's output, where AdAutoMix taps
ResNet-18 (the released CIFAR config reads stage 3 of 4: 256 channels, 8x8 at 32 px): a
pre-activation block ends in its addition, so the tap is that sum, which layer4's first block
normalises and rectifies for the trunk (the generator's own 1x1 projections follow it).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from .base import Classifier
from .specs import arch_spec

WIDTHS = (64, 128, 256, 512)


class PreActBlock(nn.Module):
    """BN - ReLU - conv3x3 (stride) - BN - ReLU - conv3x3, plus the shortcut (module docstring)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct-ResNet with basic blocks as a plain module (what an export loads into)."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, cifar_stem: bool = True,
                 widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1 if cifar_stem else 2, padding=1, bias=False)
        in_planes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(n):
                layer.append(PreActBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def preact_resnet18(num_classes: int = 10, cifar_stem: bool = True) -> PreActResNet:
    """The released ``preactresnet18`` (``cifar_stem`` False: its stride-2 Tiny-ImageNet stem)."""
    return PreActResNet((2, 2, 2, 2), num_classes, cifar_stem)


def _build(arch: str, num_classes: int, cifar_stem: bool) -> PreActResNet:
    options = arch_spec(arch).options
    return PreActResNet(tuple(options["blocks"]), num_classes, cifar_stem, tuple(options.get("widths", WIDTHS)))


class PreActResNetClassifier(Classifier):
    """The PreAct-ResNet trunk (``PreActResNet``'s modules and names) + ``head_one`` + ``head_mix``.

    Stages: 0 = stem (conv1), 1..4 = layer1..4; the tap is layer3's output (the input of stage
    4). ManifoldMix mixes at the input, after layer1 and after layer2 (Manifold Mixup's k = 0, 1,
    2 on this network).
    """

    @classmethod
    def library_model(cls, arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
        """``PreActResNet`` with the stem asked for and a fresh ``linear``."""
        return _build(arch, num_classes, cifar_stem)

    def __init__(self, arch: str, num_classes: int, cifar_stem: bool = True, drop_path: float = 0.0,
                 mix_head: bool = True):
        super().__init__()
        if drop_path:
            raise UsageError(f"--drop-path applies to the Swin, ConvNeXt and DeiT architectures, not {arch}")
        self.arch = arch
        self.spec = arch_spec(arch)
        self.cifar_stem = cifar_stem
        net = _build(arch, 1, cifar_stem)
        self.conv1 = net.conv1
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.stage3_channels = self.layer3[-1].conv2.out_channels
        self.feature_dim = net.linear.in_features
        self._make_heads(num_classes, trunc_normal=False, mix_head=mix_head)   # nn.Linear's init, as released

    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return self.conv1(h)
        return getattr(self, f"layer{i}")(h)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    def cam_target(self) -> nn.Module:
        """The last block (its output is what is pooled, [B, 512, h, w])."""
        return self.layer4[-1]


__all__ = ["PreActBlock", "PreActResNet", "PreActResNetClassifier", "preact_resnet18"]
