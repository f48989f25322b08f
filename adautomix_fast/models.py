"""Backbones, the two classification heads and the stage-3 feature tap (ALGORITHM.md section 1).

A `Classifier` is a torchvision ResNet/ResNeXt trunk (``conv1 .. layer4``, global average pool)
with two linear heads: ``head_one`` for clean images and ``head_mix`` for mixed images. The
generator reads the output of ``layer3`` (the "stage-3 tap"), so the forward pass is split in
two halves that the AdAutoMix step can call separately: `stem_to_stage3` and
`stage3_to_logits`.

For images of 64 px or less the "CIFAR stem" replaces the 7x7/stride-2 convolution and the max
pool by a 3x3/stride-1 convolution, as the released implementation does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet

from .errors import UsageError

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
        raise UsageError(f"unknown --arch {arch!r}; choose one of tiny, {', '.join(_TORCHVISION_ARCHS)}")
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


class Classifier(nn.Module):
    """Backbone + ``head_one`` + ``head_mix`` (both one nn.Linear on pooled features).

    ``mix_head=False`` leaves out ``head_mix`` (``head_mix`` is None): the baselines train one
    head (OpenMixup's ``head0``) on clean and mixed images alike.
    """

    def __init__(self, arch: str, num_classes: int, cifar_stem: bool, mix_head: bool = True):
        super().__init__()
        trunk = build_trunk(arch, cifar_stem)
        self.arch = arch
        self.cifar_stem = cifar_stem
        self.stage3_channels, self.feature_dim = stage_channels(trunk)
        # Keep torchvision's attribute names so that export is a plain key copy.
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_one = nn.Linear(self.feature_dim, num_classes)
        self.head_mix = nn.Linear(self.feature_dim, num_classes) if mix_head else None
        # Heads initialised as torchvision initialises its fc layer (nn.Linear's default).

    # ------------------------------------------------------------------ stages
    # The trunk as a sequence of stages: 0 = stem (conv1, bn1, relu, maxpool), 1..4 = layer1..4.
    # The generator reads the output of stage TAP_STAGE - 1 (layer3), i.e. the input of stage
    # TAP_STAGE; ManifoldMix mixes hidden states between stages. Other architectures provide the
    # same three members (num_stages, tap_stage, forward_stages).
    num_stages = 5
    tap_stage = 4

    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return self.maxpool(self.relu(self.bn1(self.conv1(h))))
        return getattr(self, f"layer{i}")(h)

    def forward_stages(self, h: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run stages ``start .. end - 1`` on ``h`` (images when ``start`` is 0); ``end`` None runs
        to the last stage. The result is the trunk's feature map before pooling when end is None."""
        end = self.num_stages if end is None else end
        for i in range(start, end):
            h = self._run_stage(i, h)
        return h

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Last feature map -> [B, feature_dim] (global average pool)."""
        return torch.flatten(self.avgpool(h), 1)

    def stem_to_stage3(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the generator's input features (layer3 output for ResNets)."""
        return self.forward_stages(x, 0, self.tap_stage)

    def stage3_to_pooled(self, f3: torch.Tensor) -> torch.Tensor:
        """The generator's tap features -> pooled features (the rest of the trunk, then pooling)."""
        return self.pool(self.forward_stages(f3, self.tap_stage))

    def cam_target(self) -> nn.Module:
        """The layer whose activations and gradients Grad-CAM uses (the last residual block)."""
        return self.layer4[-1]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3_to_pooled(self.stem_to_stage3(x))

    def forward(self, x: torch.Tensor):
        """(head_one logits, head_mix logits); head_one logits alone without a mix head."""
        z = self.pooled(x)
        if self.head_mix is None:
            return self.head_one(z)
        return self.head_one(z), self.head_mix(z)


def default_cifar_stem(image_size: int) -> bool:
    return image_size <= 64
