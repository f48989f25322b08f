"""RandAugment as the released transformer runs use it, on torchvision ops and torch's RNG.

The released CIFAR-100 configs (``sz224_randaug_bs100.py``, ``sz32_randaug_bs100.py``) use
mmcls's ``RandAugment`` with the FixMatch policy set, ``num_policies=2, total_level=10,
magnitude_level=7, magnitude_std=0.5`` ("rand-m7-mstd0.5"), ``pad_val=(114, 123, 125)`` and
bicubic interpolation. Per image: draw ``n`` ops from the 14 below with replacement; for each, a
level ~ N(m, std) clipped to [0, total] maps linearly onto the op's range; each op then runs
with probability 0.5, and the signed ones (geometry and enhancements) negate their magnitude
with probability 0.5.

    AutoContrast  Brightness 1+-[.05,.95]  Color 1+-[.05,.95]  Contrast 1+-[.05,.95]  Equalize
    Identity  Posterize bits [4,8]  Rotate [0,30] deg  Sharpness 1+-[.05,.95]
    Shear x / y [0,.3]  Solarize threshold [256,0]  Translate x / y [0,.3] of the size

Why hand-written: torchvision's ``RandAugment`` has no magnitude noise and other op ranges, and
timm's (like mmcls's) draws from Python's ``random``/NumPy. Every draw here comes from torch's
global CPU generator, which the data pipeline seeds per image (``sampling.SeededDataset``), so an
image's augmentation depends only on (seed, epoch, index). The ops are torchvision's functional
ops (PIL images or uint8 tensors); each matches mmcv's definition (same blend targets, shear
about the top-left corner, solarize at ``>= threshold``), up to interpolation details.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..errors import UsageError

# (name, (low, high) of the magnitude or None, signed)
POLICIES = (
    ("AutoContrast", None, False),
    ("Brightness", (0.05, 0.95), True),
    ("Color", (0.05, 0.95), True),
    ("Contrast", (0.05, 0.95), True),
    ("Equalize", None, False),
    ("Identity", None, False),
    ("Posterize", (4.0, 8.0), False),
    ("Rotate", (0.0, 30.0), True),
    ("Sharpness", (0.05, 0.95), True),
    ("ShearX", (0.0, 0.3), True),
    ("ShearY", (0.0, 0.3), True),
    ("Solarize", (256.0, 0.0), False),
    ("TranslateX", (0.0, 0.3), True),
    ("TranslateY", (0.0, 0.3), True),
)
PAD_VAL = (114, 123, 125)
_SPEC = re.compile(r"^(m(?P<m>\d+(\.\d+)?)|n(?P<n>\d+)|mstd(?P<std>\d+(\.\d+)?))$")


@dataclass(frozen=True)
class RandAugmentSpec:
    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0


def parse_randaugment(text: str) -> RandAugmentSpec:
    """timm's notation, e.g. "rand-m7-n2-mstd0.5" (n defaults to 2, mstd to 0); one-line
    UsageError for anything else."""
    parts = text.split("-")
    if parts[0] != "rand" or len(parts) < 2:
        raise UsageError(f"--randaugment {text!r}: expected timm's form rand-m<magnitude>[-n<ops>][-mstd<std>], "
                         "e.g. rand-m7-n2-mstd0.5")
    values: dict = {}
    for part in parts[1:]:
        match = _SPEC.match(part)
        if not match:
            raise UsageError(f"--randaugment {text!r}: unknown part {part!r} (use m<magnitude>, n<ops>, mstd<std>)")
        values.update({k: v for k, v in match.groupdict().items() if v is not None})
    if "m" not in values:
        raise UsageError(f"--randaugment {text!r}: the magnitude is missing (e.g. rand-m7-n2-mstd0.5)")
    spec = RandAugmentSpec(num_ops=int(values.get("n", 2)), magnitude=float(values["m"]),
                           magnitude_std=float(values.get("std", 0.0)))
    if spec.num_ops < 1 or not 0 <= spec.magnitude <= RandAugment.TOTAL_LEVEL:
        raise UsageError(f"--randaugment {text!r}: need n >= 1 and 0 <= m <= {RandAugment.TOTAL_LEVEL}")
    return spec


class RandAugment:
    """Callable on a PIL image or a uint8 [C, H, W] tensor (see the module docstring)."""

    TOTAL_LEVEL = 10.0
    PROB = 0.5
    NEGATIVE_PROB = 0.5

    def __init__(self, spec: RandAugmentSpec, interpolation: InterpolationMode = InterpolationMode.BICUBIC,
                 fill: tuple[int, int, int] = PAD_VAL):
        self.spec = spec
        self.interpolation = interpolation
        self.fill = list(fill)

    def __repr__(self) -> str:
        s = self.spec
        return f"RandAugment(n={s.num_ops}, m={s.magnitude}, mstd={s.magnitude_std}, fill={self.fill})"

    def _magnitude(self, low: float, high: float) -> float:
        level = self.spec.magnitude
        if self.spec.magnitude_std > 0:
            level = level + self.spec.magnitude_std * float(torch.randn(()))
            level = min(self.TOTAL_LEVEL, max(0.0, level))
        return level / self.TOTAL_LEVEL * (high - low) + low

    def __call__(self, img):
        # PIL runs every op, bicubic geometry included (torchvision's tensor kernels have no
        # bicubic rotate/affine): a uint8 tensor goes through PIL and comes back as one.
        if isinstance(img, torch.Tensor):
            return F.pil_to_tensor(self._ops(F.to_pil_image(img)))
        return self._ops(img)

    def _ops(self, img):
        for i in torch.randint(len(POLICIES), (self.spec.num_ops,)).tolist():
            name, span, signed = POLICIES[i]
            magnitude = self._magnitude(*span) if span is not None else 0.0
            if float(torch.rand(())) > self.PROB:
                continue
            if signed and float(torch.rand(())) < self.NEGATIVE_PROB:
                magnitude = -magnitude
            img = self._apply(img, name, magnitude)
        return img

    def _apply(self, img, name: str, m: float):
        if name == "Identity":
            return img
        if name == "AutoContrast":
            return F.autocontrast(img)
        if name == "Equalize":
            return F.equalize(img)
        if name == "Brightness":
            return F.adjust_brightness(img, 1.0 + m)
        if name == "Color":
            return F.adjust_saturation(img, 1.0 + m)
        if name == "Contrast":
            return F.adjust_contrast(img, 1.0 + m)
        if name == "Sharpness":
            return F.adjust_sharpness(img, 1.0 + m)
        if name == "Posterize":
            return F.posterize(img, int(m))
        if name == "Solarize":
            return img if m >= 256 else F.solarize(img, float(int(m)))   # invert pixels >= threshold
        affine = dict(interpolation=self.interpolation, fill=self.fill)
        if name == "Rotate":
            return F.rotate(img, m, **affine)
        h, w = F.get_size(img)
        if name in ("ShearX", "ShearY"):
            # mmcv's shear matrix [[1, m, 0], [0, 1, 0]] about the top-left corner
            shear = [math.degrees(math.atan(m)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(m))]
            return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0], **affine)
        offset = [m * w, 0.0] if name == "TranslateX" else [0.0, m * h]
        return F.affine(img, angle=0.0, translate=offset, scale=1.0, shear=[0.0, 0.0], **affine)
