"""ResNet / ResNeXt classifiers (torchvision trunks) with the stage-3 tap.

The trunk is torchvision's ``conv1 .. layer4`` (attribute names kept, so export is a key copy);
the generator reads the output of ``layer3``. For images of 64 px or less the "CIFAR stem"
replaces the 7x7/stride-2 convolution and the max pool by a 3x3/stride-1 convolution, as the
released implementation does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet

from ..errors import UsageError
from .base import Classifier
from .specs import arch_spec, default_cifar_stem  # noqa: F401  (default_cifar_stem: re-exported)

# torchvision constructors of the supported trunks. `tiny` is a narrow 4-stage ResNet (BasicBlock,
# one block per stage, widths 8-16-32-64) so that tests of whole steps run in seconds on a CPU.
_TORCHVISION_ARCHS = {
    "r18": torchvision.models.resnet18,
    "r34": torchvision.models.resnet34,
    "r50": torchvision.models.resnet50,
    "rx50": torchvision.models.resnext50_32x4d,
}
TINY_WIDTHS = (8, 16, 32, 64)


class TinyResNet(ResNet):
    """torchvision's ResNet with BasicBlocks [1,1,1,1] and narrow stages (test architecture).

    Built on torchvision's own class so that every code path (stem, layers, pooling, init,
    export) is the one the real architectures take; only the widths differ.
    """

    def __init__(self, widths=TINY_WIDTHS):
        super().__init__(BasicBlock, [1, 1, 1, 1], num_classes=10)
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(BasicBlock, widths[0], 1)
        self.layer2 = self._make_layer(BasicBlock, widths[1], 1, stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], 1, stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], 1, stride=2)
        self.fc = nn.Linear(widths[3], 10)
        for m in self.modules():  # torchvision's initialisation, re-applied to the new layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_trunk(arch: str, cifar_stem: bool) -> ResNet:
    """A torchvision ResNet (fc kept only for its in_features; the heads replace it)."""
    if arch == "tiny":
        net = TinyResNet()
    elif arch in _TORCHVISION_ARCHS:
        net = _TORCHVISION_ARCHS[arch](weights=None)
    else:
        raise UsageError(f"unknown ResNet --arch {arch!r}; choose one of tiny, {', '.join(_TORCHVISION_ARCHS)}")
    if cifar_stem:
        width = net.conv1.out_channels
        net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net


def stage_channels(trunk: ResNet) -> tuple[int, int]:
    """(channels of the layer3 output, channels of the layer4 output)."""

    def out_channels(layer: nn.Sequential) -> int:
        block = layer[-1]
        last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
        return last_bn.num_features

    return out_channels(trunk.layer3), out_channels(trunk.layer4)


class ResNetClassifier(Classifier):
    """torchvision ResNet trunk + ``head_one`` + ``head_mix``.

    Stages: 0 = stem (conv1, bn1, relu, maxpool), 1..4 = layer1..4; the tap is layer3's output
    (the input of stage 4), [B, C, h, w], which is the generator's input as it is.
    """

    @classmethod
    def library_model(cls, arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
        """torchvision's ResNet (with the released CIFAR stem when asked) and a fresh ``fc``."""
        net = build_trunk(arch, cifar_stem)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        return net

    def __init__(self, arch: str, num_classes: int, cifar_stem: bool, drop_path: float = 0.0,
                 mix_head: bool = True):
        super().__init__()
        if drop_path:
            raise UsageError(f"--drop-path applies to the Swin, ConvNeXt and DeiT architectures, not {arch}")
        trunk = build_trunk(arch, cifar_stem)
        self.arch = arch
        self.spec = arch_spec(arch)
        self.cifar_stem = cifar_stem
        self.stage3_channels, self.feature_dim = stage_channels(trunk)
        # Keep torchvision's attribute names so that export is a plain key copy.
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self._make_heads(num_classes, trunc_normal=False, mix_head=mix_head)   # as torchvision initialises its fc

    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return self.maxpool(self.relu(self.bn1(self.conv1(h))))
        return getattr(self, f"layer{i}")(h)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Last feature map -> [B, feature_dim] (global average pool)."""
        return torch.flatten(self.avgpool(h), 1)

    def cam_target(self) -> nn.Module:
        """The last residual block (its output is [B, C, h, w])."""
        return self.layer4[-1]
