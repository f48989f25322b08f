"""The architecture families as one table: family name -> its classifier class.

``ARCH_SPECS`` (:mod:`.specs`) says which family each ``--arch`` belongs to and its published
facts (tap channels and size, stem rule, recipe defaults); the family's class (:mod:`.resnet`,
:mod:`.swin`, :mod:`.convnext`, :mod:`.deit`, :mod:`.cifar_resnet`, :mod:`.preact_resnet`) says
how to build it, where the generator taps it (``stem_to_stage3`` / ``tap_features``), which layer
Grad-CAM reads (``cam_target``) and the library model an export loads into (``library_model``). A
new family is one module and one row here.
"""

from __future__ import annotations

import torch.nn as nn

from .base import Classifier
from .cifar_resnet import CifarResNetClassifier
from .convnext import ConvNeXtClassifier
from .deit import DeiTClassifier
from .library import LibraryClassifier, build_library_classifier, unpack_backbone
from .preact_resnet import PreActResNetClassifier
from .resnet import ResNetClassifier
from .specs import arch_spec, is_library_arch
from .swin import SwinClassifier

FAMILIES: dict[str, type[Classifier]] = {
    "resnet": ResNetClassifier,
    "swin": SwinClassifier,
    "convnext": ConvNeXtClassifier,
    "deit": DeiTClassifier,
    # the CIFAR networks: He et al.'s CIFAR ResNets and PreAct-ResNet-18, this package's modules
    "cifar_resnet": CifarResNetClassifier,
    "preact_resnet": PreActResNetClassifier,
    # timm/<name>, tv/<name> and one's own modules: stages, tap and pooling read from the model
    "library": LibraryClassifier,
}


def classifier_class(arch: str) -> type[Classifier]:
    """The classifier class of ``arch``'s family (a one-line UsageError for an unknown arch)."""
    return FAMILIES[arch_spec(arch).family]


def build_classifier(arch, num_classes: int, cifar_stem: bool, drop_path: float = 0.0,
                     mix_head: bool = True) -> Classifier:
    """The classifier of ``arch``: its family's trunk and the two heads (``mix_head=False``: the
    baselines' single head). ``arch`` is an ``--arch`` name, ``timm/<name>``, ``tv/<name>``, an
    ``nn.Module`` backbone, or a ``library.BackboneChoice`` (one of those with a chosen tap)."""
    source, _ = unpack_backbone(arch)
    if not isinstance(source, str) or is_library_arch(source):
        return build_library_classifier(arch, num_classes, cifar_stem, drop_path=drop_path, mix_head=mix_head)
    return classifier_class(arch)(arch, num_classes, cifar_stem, drop_path=drop_path, mix_head=mix_head)


def library_model(arch: str, num_classes: int, cifar_stem: bool = False) -> nn.Module:
    """The library's own model for ``arch`` (what an exported state dict loads into):
    torchvision's ResNets, ResNeXt, Swin-T and ConvNeXt-T, timm's DeiT-S (the test variants:
    their library classes), this package's plain modules for the CIFAR networks
    (``cifar_resnet.CifarResNet``, ``preact_resnet.PreActResNet``); ``cifar_stem``: the released
    CIFAR stems (ResNet: 3x3/1 conv without the max pool; ConvNeXt: a 3x3/1 conv; PreAct-ResNet:
    stride 1, else its stride-2 Tiny-ImageNet stem)."""
    return classifier_class(arch).library_model(arch, num_classes, cifar_stem)


__all__ = ["FAMILIES", "build_classifier", "classifier_class", "library_model"]
