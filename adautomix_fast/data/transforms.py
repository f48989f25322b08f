"""Per-data-set train/eval transforms (ALGORITHM.md section 9), torchvision.transforms.v2.

Inputs are uint8 CHW tensors (array data sets) or PIL images (folders); geometric ops run on
that input, then ``ToImage -> ToDtype(float32, scale=True) -> Normalize`` produce a float32 CHW
tensor normalised by the data set's mean/std. All randomness comes from torch's global CPU
generator, which :mod:`.sampling` seeds per sample.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the training sets (the values OpenMixup/AdAutoMix configs use).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# digits: computed on our 1,437-image training split after the 32x32 upsampling (gray, so the
# three channels are equal): mean 0.30535, std 0.32366.
DIGITS_MEAN = (0.3054,) * 3
DIGITS_STD = (0.3237,) * 3

NORMALIZATION = {
    "digits": (DIGITS_MEAN, DIGITS_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "tiny-imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "folder": (IMAGENET_MEAN, IMAGENET_STD),
}
NATIVE_SIZE = {"digits": 32, "cifar10": 32, "cifar100": 32, "tiny-imagenet": 64, "imagenet": 224, "folder": 224}
# ImageNet eval: resize the shorter side to size / 0.875 (256 for 224), then center-crop.
EVAL_CROP_RATIO = 0.875


def _finish(name: str) -> list:
    mean, std = NORMALIZATION[name]
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def build_transforms(name: str, image_size: int | None = None):
    """Return ``(train_transform, eval_transform, size)`` for data set ``name``.

    ``image_size`` overrides the native training size (32, 64 or 224).
    """
    native = NATIVE_SIZE[name]
    size = native if image_size is None else int(image_size)
    if name in ("digits", "cifar10", "cifar100"):
        # Small images: pad-4 random crop (padding scaled if the size is overridden).
        resize = [] if size == native else [v2.Resize(size, antialias=True)]
        crop = v2.RandomCrop(size, padding=max(1, size // 8))
        if name == "digits":
            # No horizontal flip: a mirrored digit is a different glyph (or none), not the same
            # class, so flipping would teach the model wrong labels.
            train = resize + [crop]
        else:
            train = resize + [crop, v2.RandomHorizontalFlip()]
        evaluate = list(resize)
    elif name == "tiny-imagenet":
        train = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        # Images are already 64x64, so this is the identity at the native size.
        evaluate = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    else:  # imagenet, folder
        train = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(int(size / EVAL_CROP_RATIO), antialias=True), v2.CenterCrop(size)]
    return v2.Compose(train + _finish(name)), v2.Compose(evaluate + _finish(name)), size
