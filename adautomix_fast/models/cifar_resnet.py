"""The CIFAR ResNets of He et al. (2016, sec. 4.2): ``resnet20``, ``resnet32``, ``resnet56``.

A 3x3 convolution to 16 channels (BN, ReLU), then 3 stages of n basic blocks (n = 3, 5, 9 for
depth 6n + 2 = 20, 32, 56) with 16, 32 and 64 channels, stride 2 at the start of stages 2 and 3,
global average pooling and one linear layer: 0.27M, 0.46M and 0.85M parameters for 10 classes.

Shortcuts are the paper's option A: where a block halves the map and doubles the channels, the
identity shortcut subsamples by 2 and pads the new channels with zeros, so the network has no
projection parameters (the paper's CIFAR networks use it, "so our residual models have exactly
the same depth, width, and number of parameters as the plain counterparts"; the parameter
counts above are option A's). Weights are initialised as the paper says (He et al. 2015: normal,
fan-in, gain sqrt 2) on every convolution and linear layer, BatchNorm to 1 and 0.

There is no library constructor: :class:`CifarResNet` is the network as a plain module
(``conv1``, ``bn1``, ``layer1..3`` of blocks with ``conv1/bn1/conv2/bn2``, ``linear``), the keys
of the widely used reimplementation (akamaster/pytorch_resnet_cifar10), so its state dicts load
here (``--pretrained``) and an export loads there. ``cifar_resnet(depth, num_classes)`` builds it;
the classifier keeps the same modules under the same names, so export is a key copy.

Stages: 0 = stem (conv1, bn1, ReLU), 1..3 = layer1..3. The generator taps the output of stage 3,
the last 8x8 map at 32 px (64 channels): ``tap_stage`` is past the last stage, and the rest of the
trunk after the tap is the pooling alone. The network has only its 3x3 stride-1 stem; at other
sizes the maps scale with the image (the tap is image / 4).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from .base import Classifier
from .specs import arch_spec

WIDTHS = (16, 32, 64)


class ShortcutA(nn.Module):
    """Option A: subsample by ``stride``, zero-pad the channels from ``in_planes`` to ``planes``
    (split evenly before and after, as the reimplementations do). No parameters."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.before = (planes - in_planes) // 2
        self.after = planes - in_planes - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """conv3x3 (stride) - BN - ReLU - conv3x3 - BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def blocks_per_stage(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise UsageError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth}")
    return (depth - 2) // 6


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of depth 6n + 2 as a plain module (what an export loads into)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        n = blocks_per_stage(depth)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(widths[-1], num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """He et al.'s CIFAR ResNet-``depth`` (20, 32, 56, ...): the constructor exports load into."""
    return CifarResNet(depth, num_classes)


class CifarResNetClassifier(Classifier):
    """The CIFAR ResNet trunk (``CifarResNet``'s modules and names) + ``head_one`` + ``head_mix``.

    Stages: 0 = stem, 1..3 = layer1..3; the tap is layer3's output (after the last stage), so
    ``stage3_to_pooled`` is the pooling alone. ManifoldMix mixes at the input, after layer1 and
    after layer2 (Manifold Mixup's k = 0, 1, 2).
    """

    num_stages = 4
    tap_stage = 4

    @classmethod
    def library_model(cls, arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
        """``CifarResNet`` of the architecture's depth (``cifar_stem`` does not apply: the CIFAR
        stem is its only one)."""
        return cifar_resnet(arch_spec(arch).options["depth"], num_classes)

    def __init__(self, arch: str, num_classes: int, cifar_stem: bool = True, drop_path: float = 0.0,
                 mix_head: bool = True):
        super().__init__()
        if drop_path:
            raise UsageError(f"--drop-path applies to the Swin, ConvNeXt and DeiT architectures, not {arch}")
        self.arch = arch
        self.spec = arch_spec(arch)
        # The network's only stem is the CIFAR one, whatever ``cifar_stem`` says (the library API
        # passes False by default); the CLI refuses an explicit --no-cifar-stem (check_image_size).
        self.cifar_stem = True
        net = cifar_resnet(self.spec.options["depth"], 1)
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.stage3_channels = self.feature_dim = net.linear.in_features
        self._make_heads(num_classes, trunc_normal=False, mix_head=mix_head)
        for head in (self.head_one, self.head_mix):   # the network's own init of its linear layer
            if head is not None:
                nn.init.kaiming_normal_(head.weight)

    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return F.relu(self.bn1(self.conv1(h)))
        return getattr(self, f"layer{i}")(h)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    def cam_target(self) -> nn.Module:
        """The last residual block (its output is the tap, [B, 64, h, w])."""
        return self.layer3[-1]


__all__ = ["BasicBlock", "CifarResNet", "CifarResNetClassifier", "ShortcutA", "cifar_resnet"]
