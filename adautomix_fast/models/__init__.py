"""Backbones, the two classification heads and the generator's feature tap.

``build_classifier(arch, num_classes, cifar_stem)`` builds the classifier of any supported
architecture (``ARCH_SPECS``) from its family in the table of :mod:`.families`: torchvision
ResNet/ResNeXt (:mod:`.resnet`), Swin (:mod:`.swin`), ConvNeXt (:mod:`.convnext`) and timm DeiT
(:mod:`.deit`), and the CIFAR networks, He et al.'s CIFAR ResNets (:mod:`.cifar_resnet`) and
PreAct-ResNet-18 (:mod:`.preact_resnet`); the interface they share is :mod:`.base`'s. ``load_pretrained`` /
``export_state_dict`` (:mod:`.pretrained`) and ``library_model`` move weights between them and
the libraries.
"""

from .base import Classifier
from .cifar_resnet import CifarResNet, cifar_resnet
from .families import FAMILIES, build_classifier, classifier_class, library_model
from .preact_resnet import PreActResNet, preact_resnet18
from .pretrained import export_state_dict, load_pretrained, load_pretrained_model
from .resnet import TINY_WIDTHS, ResNetClassifier, TinyResNet, build_trunk, stage_channels
from .specs import ARCH_SPECS, ArchSpec, arch_spec, check_image_size, default_cifar_stem, drop_path_rate

__all__ = [
    "Classifier", "FAMILIES", "build_classifier", "classifier_class", "ResNetClassifier", "TinyResNet",
    "TINY_WIDTHS", "build_trunk", "stage_channels",
    "default_cifar_stem", "ARCH_SPECS", "ArchSpec", "arch_spec", "check_image_size", "drop_path_rate",
    "load_pretrained",
    "load_pretrained_model", "export_state_dict", "library_model", "CifarResNet", "cifar_resnet", "PreActResNet",
    "preact_resnet18",
]
