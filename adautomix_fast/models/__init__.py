"""Backbones, the two classification heads and the generator's feature tap.

``Classifier(arch, num_classes, cifar_stem)`` builds the classifier of any supported
architecture (``ARCH_SPECS``): torchvision ResNet/ResNeXt (:mod:`.resnet`), Swin
(:mod:`.swin`), ConvNeXt (:mod:`.convnext`) and timm DeiT (:mod:`.deit`); the interface they
share is :mod:`.base`'s. ``load_pretrained`` / ``export_state_dict`` / ``library_model``
(:mod:`.pretrained`) move weights between them and the libraries.
"""

from .base import Classifier
from .pretrained import export_state_dict, library_model, load_pretrained, load_pretrained_model
from .resnet import TINY_WIDTHS, ResNetClassifier, TinyResNet, build_trunk, stage_channels
from .specs import ARCH_SPECS, ArchSpec, arch_spec, check_image_size, default_cifar_stem, drop_path_rate

__all__ = [
    "Classifier", "ResNetClassifier", "TinyResNet", "TINY_WIDTHS", "build_trunk", "stage_channels",
    "default_cifar_stem", "ARCH_SPECS", "ArchSpec", "arch_spec", "check_image_size", "drop_path_rate", "load_pretrained",
    "load_pretrained_model", "export_state_dict", "library_model",
]
