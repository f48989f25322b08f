"""Per-data-set train/eval transforms (docs/algorithm.md, Published settings), torchvision.transforms.v2.

Inputs are uint8 CHW tensors (array data sets) or PIL images (folders); geometric ops run on
that input, then ``ToImage -> ToDtype(float32, scale=True) -> Normalize`` produce a float32 CHW
tensor normalised by the data set's mean/std. All randomness comes from torch's global CPU
generator, which :mod:`.sampling` seeds per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torchvision.transforms import InterpolationMode, v2

from .dada import CutoutTensor, DADAPolicy, policy_for
from .randaugment import RandAugment, parse_randaugment

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
    "cub200": (IMAGENET_MEAN, IMAGENET_STD),     # fine-tuning from ImageNet weights: ImageNet statistics
    "aircraft": (IMAGENET_MEAN, IMAGENET_STD),
    "cars": (IMAGENET_MEAN, IMAGENET_STD),
}
NATIVE_SIZE = {"digits": 32, "cifar10": 32, "cifar100": 32, "tiny-imagenet": 64, "imagenet": 224, "folder": 224,
               "cub200": 224, "aircraft": 224, "cars": 224}
FINEGRAINED = ("cub200", "aircraft", "cars")
# The training crops and resizing interpolations a recipe may choose (AugmentRecipe).
TRAIN_CROPS = ("pad", "pad-reflect", "rrc")
INTERPOLATIONS = ("bilinear", "bicubic")
# The released fine-grained pipeline: Resize(256) (shorter side), RandomResizedCrop(224, scale
# (0.5, 1)), flip; evaluation Resize(256) + CenterCrop(224).
FINEGRAINED_CROP_SCALE = 0.5
# ImageNet eval: resize the shorter side to size / 0.875 (256 for 224), then center-crop.
EVAL_CROP_RATIO = 0.875


def _finish(name: str) -> list:
    mean, std = NORMALIZATION[name]
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


@dataclass(frozen=True)
class AugmentRecipe:
    """An architecture recipe's changes to a data set's published augmentation (docs/archs.md, Recipes).

    train_crop: None (the data set's own), "pad" / "pad-reflect" (random crop after padding by
        size // 8, zeros or reflection), "rrc" (RandomResizedCrop from the image as it is).
    crop_scale: RandomResizedCrop's minimum area (None: 0.08, fine-grained sets 0.5).
    interpolation: "bilinear" (None) or "bicubic", for every resize and the crop.
    randaugment: timm-style "rand-m7-n2-mstd0.5" (see :mod:`.randaugment`), after crop and flip.
    augment: a searched policy after crop and flip, with Cutout after normalisation ("dada": the
        data set's DADA policy, "dada-<policy>": one by name; see :mod:`.dada`).
    """

    train_crop: Optional[str] = None
    crop_scale: Optional[float] = None
    interpolation: Optional[str] = None
    randaugment: Optional[str] = None
    augment: Optional[str] = None

    @classmethod
    def from_config(cls, cfg) -> "AugmentRecipe":
        return cls(cfg.train_crop, cfg.crop_scale, cfg.interpolation, cfg.randaugment, cfg.augment)

    @property
    def is_default(self) -> bool:
        return self == AugmentRecipe()

    @property
    def mode(self) -> InterpolationMode:
        return InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR


def _recipe_crop(recipe: AugmentRecipe, size: int, native: int, default_scale: float) -> list:
    """The train crop a recipe asks for (``train_crop`` set)."""
    if recipe.train_crop == "rrc":
        scale = (recipe.crop_scale if recipe.crop_scale is not None else default_scale, 1.0)
        return [v2.RandomResizedCrop(size, scale=scale, interpolation=recipe.mode, antialias=True)]
    resize = [] if size == native else [v2.Resize(size, interpolation=recipe.mode, antialias=True)]
    mode = "reflect" if recipe.train_crop == "pad-reflect" else "constant"
    return resize + [v2.RandomCrop(size, padding=max(1, size // 8), padding_mode=mode)]


def build_transforms(name: str, image_size: int | None = None, recipe: Optional[AugmentRecipe] = None,
                     small_native: Optional[int] = None):
    """Return ``(train_transform, eval_transform, size)`` for data set ``name``.

    ``image_size`` overrides the native training size (32, 64 or 224); ``recipe`` applies an
    architecture recipe's crop, interpolation and RandAugment (default: the data set's own).
    ``small_native``: the side of a ``folder`` data set of small images held in memory, which
    then gets the small-image recipe at that native size (pad crop + flip, evaluation as is)
    instead of the ImageNet one.
    """
    native = NATIVE_SIZE[name] if small_native is None else int(small_native)
    size = native if image_size is None else int(image_size)
    recipe = recipe or AugmentRecipe()
    if not recipe.is_default:
        return _recipe_transforms(name, size, native, recipe, small=small_native is not None)
    if name in ("digits", "cifar10", "cifar100") or small_native is not None:
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
    elif name in FINEGRAINED:
        resize = [v2.Resize(int(size / EVAL_CROP_RATIO), antialias=True)]
        train = resize + [v2.RandomResizedCrop(size, scale=(FINEGRAINED_CROP_SCALE, 1.0), antialias=True),
                          v2.RandomHorizontalFlip()]
        evaluate = resize + [v2.CenterCrop(size)]
    else:  # imagenet, folder
        train = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(int(size / EVAL_CROP_RATIO), antialias=True), v2.CenterCrop(size)]
    return v2.Compose(train + _finish(name)), v2.Compose(evaluate + _finish(name)), size


def _recipe_transforms(name: str, size: int, native: int, recipe: AugmentRecipe, small: bool = False):
    """The data set's pipeline with the recipe's changes (released ``sz224_randaug`` /
    ``sz32_randaug`` pipelines for CIFAR-100: RRC 224 scale 0.8 bicubic or reflect-padded crop,
    flip, RandAugment; evaluation: resize to the size)."""
    mode = recipe.mode
    small = small or name in ("digits", "cifar10", "cifar100")
    if small:
        default_crop = AugmentRecipe("pad", interpolation=recipe.interpolation)
        evaluate = [] if size == native else [v2.Resize(size, interpolation=mode, antialias=True)]
        scale = 0.08
    elif name in FINEGRAINED:
        default_crop = None
        evaluate = [v2.Resize(int(size / EVAL_CROP_RATIO), interpolation=mode, antialias=True), v2.CenterCrop(size)]
        scale = FINEGRAINED_CROP_SCALE
    else:
        default_crop = AugmentRecipe("rrc", interpolation=recipe.interpolation)
        short = size if name == "tiny-imagenet" else int(size / EVAL_CROP_RATIO)
        evaluate = [v2.Resize(short, interpolation=mode, antialias=True), v2.CenterCrop(size)]
        scale = 0.08
    if recipe.train_crop is not None:
        train = _recipe_crop(recipe, size, native, scale)
    elif default_crop is not None:
        train = _recipe_crop(AugmentRecipe(default_crop.train_crop, recipe.crop_scale, recipe.interpolation),
                             size, native, scale)
    else:   # fine-grained: resize to size / 0.875, then the crop
        train = [v2.Resize(int(size / EVAL_CROP_RATIO), interpolation=mode, antialias=True),
                 v2.RandomResizedCrop(size, scale=(recipe.crop_scale or scale, 1.0), interpolation=mode,
                                      antialias=True)]
    if name != "digits":   # a mirrored digit is another glyph
        train.append(v2.RandomHorizontalFlip())
    if recipe.randaugment:
        train.append(RandAugment(parse_randaugment(recipe.randaugment)))
    after = []
    if recipe.augment:
        train.append(DADAPolicy(policy_for(recipe.augment, name)))
        if small:   # DADA's CIFAR/SVHN configs cut 16 of 32 px; its ImageNet config cuts nothing
            after.append(CutoutTensor(max(1, size // 2)))
    return v2.Compose(train + _finish(name) + after), v2.Compose(evaluate + _finish(name)), size
