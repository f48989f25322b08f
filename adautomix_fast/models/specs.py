"""One table of what each architecture is and what the generator reads from it.

``ARCH_SPECS[arch]`` holds the published facts that the config, the presets, the generator and
the pretrained/export code need: the tap's channels and size, the generator's published
upsampling mode and ``lam_concat``, the native image size, whether a CIFAR stem exists, the
library (torchvision or timm), its ImageNet weights and its classifier's state-dict prefix.
Sources: the released AdAutoMix configs (OpenMixup ``configs/classification/cifar100/adautomix``,
``.../cub200``, ``.../aircrafts``, ``.../cars``) and the released training logs (docs/archs.md,
Architectures).

Kernel limits (``adautomix_fast.kernels``): the cross-attention kernel takes head dims
D = tap_channels // 2 up to 512 (Swin-T: 384; the CIFAR ResNets 32, PreAct-ResNet-18 128), any
number of positions P = h*w (Swin-T 49, ConvNeXt-T 196 or 64 with the CIFAR stem, DeiT-S 196, R50
196, the CIFAR ResNets and PreAct-ResNet-18 64 at 32 px); the mix kernel takes up to 16 slots and
next_pow2(N) * next_pow2(w) <= 4096 (w <= 14 here; 16 for the CIFAR networks at 64 px).
``tests/test_archs.py`` checks every entry against the kernels' own launch helpers.

``timm/<name>`` and ``tv/<name>`` (any timm or torchvision classification model) have no entry:
``library_spec`` makes theirs from the name (the library, its weights, and the recipe family
whose published settings apply, if any); their tap is read from the built model (:mod:`.library`).

The CIFAR networks (``resnet20/32/56``: He et al.'s CIFAR ResNets; ``preact_r18``: the
PreAct-ResNet-18 of the Manifold Mixup, PuzzleMix and Co-Mixup releases) have no library: their
constructors are this package's (:mod:`.cifar_resnet`, :mod:`.preact_resnet`), their published
size is 32 px, and they take the data set's recipe (docs/archs.md, CIFAR networks).

The ``tiny*`` entries are test architectures: the same classes and code paths with narrow,
shallow settings (``options``) so whole steps run in seconds on a CPU.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field
from typing import Any, Optional

import torchvision

from ..errors import UsageError


@dataclass(frozen=True)
class ArchSpec:
    family: str                    # resnet | swin | convnext | deit | cifar_resnet | preact_resnet
    library: str                   # torchvision | timm | adautomix_fast: whose constructor and state-dict keys
    constructor: str               # the library constructor of the real architecture
    tap_channels: int              # channels of the generator's input
    tap_size: int                  # side of the tap map at ``image_size`` without the CIFAR stem
    image_size: int                # published input size (224)
    upsample: Optional[str]        # the generator's published upsampling; None: the data set's
    lam_concat: Optional[bool]     # the generator's published lambda channel; None: the data set's
    cifar_stem: bool               # a 3x3 stride-1 stem for 32 px images exists
    cifar_tap_size: Optional[int]  # tap side with the CIFAR stem at 32 px
    size_multiple: int             # the trunk's total stride (the tap is image / this)
    fixed_size: bool               # only ``image_size`` works (a learned position table)
    weights: Optional[str]         # --pretrained imagenet: the library's weights
    head: str                      # the library classifier's state-dict prefix (export, pretrained)
    drop_path: float = 0.0         # published drop-path (stochastic depth) rate
    no_decay: tuple[str, ...] = ()  # parameter-name parts without weight decay besides norms/biases
    options: dict[str, Any] = field(default_factory=dict)  # constructor settings (Swin, test variants)
    test_only: bool = False
    cifar_stem_only: bool = False  # the CIFAR stem is the network's only stem, at every image size

    @property
    def gen_dim(self) -> int:
        """The generator's query/key channels (reduction 2): the cross-attention head dim D."""
        return max(self.tap_channels // 2, 1)

    def tap_side(self, image_size: int, cifar_stem: bool) -> int:
        if cifar_stem:
            return self.cifar_tap_size * image_size // 32
        return self.tap_size * image_size // self.image_size


_RESNET = dict(family="resnet", library="torchvision", image_size=224, upsample=None, lam_concat=None,
               cifar_stem=True, size_multiple=16, fixed_size=False, head="fc")
# Swin and DeiT: the released CIFAR-100 configs (swin_t_l3_a1_near..., deit_s_l6_a1_near...):
# AdaptiveMask(lam_concat=True, unsampling_mode='nearest'). ConvNeXt: the released ConvNeXt_CIFAR
# AdAutoMix config, the same. Norms, biases and these position tables get no weight decay
# (paramwise_options of those configs; ConvNeXt's layer scale is "gamma" there).
_SWIN = dict(family="swin", library="torchvision", image_size=224, upsample="nearest", lam_concat=True,
             cifar_stem=False, cifar_tap_size=None, fixed_size=False, head="head",
             no_decay=("relative_position_bias_table", "absolute_pos_embed"))
_CONVNEXT = dict(family="convnext", library="torchvision", image_size=224, upsample="nearest", lam_concat=True,
                 cifar_stem=True, fixed_size=False, head="classifier.2", no_decay=("layer_scale",))
# The CIFAR networks: defined at 32 px with a 3x3 stride-1 stem, no published weights, the data
# set's generator settings and recipe. He et al.'s CIFAR ResNets tap their last stage (64 ch,
# 8x8 at 32 px) and have no other stem; PreAct-ResNet-18 taps layer3 as AdAutoMix's ResNet-18 does
# (256 ch, 8x8 at 32 px) and has the released stride-2 stem for Tiny-ImageNet without the CIFAR
# one (tap 4x4 at 32 px, 8x8 at 64).
_CIFAR_RESNET = dict(family="cifar_resnet", library="adautomix_fast", tap_channels=64, tap_size=8, image_size=32,
                     upsample=None, lam_concat=None, cifar_stem=True, cifar_tap_size=8, size_multiple=4,
                     fixed_size=False, weights=None, head="linear", cifar_stem_only=True)
_PREACT = dict(family="preact_resnet", library="adautomix_fast", image_size=32, upsample=None, lam_concat=None,
               cifar_stem=True, cifar_tap_size=8, size_multiple=8, fixed_size=False, weights=None, head="linear")
_DEIT = dict(family="deit", library="timm", upsample="nearest", lam_concat=True, cifar_stem=False,
             cifar_tap_size=None, fixed_size=True, head="head", no_decay=("pos_embed", "cls_token"))

ARCH_SPECS: dict[str, ArchSpec] = {
    "r18": ArchSpec(constructor="torchvision.models.resnet18", tap_channels=256, tap_size=14, cifar_tap_size=8,
                    weights="ResNet18_Weights.IMAGENET1K_V1", **_RESNET),
    "r34": ArchSpec(constructor="torchvision.models.resnet34", tap_channels=256, tap_size=14, cifar_tap_size=8,
                    weights="ResNet34_Weights.IMAGENET1K_V1", **_RESNET),
    "r50": ArchSpec(constructor="torchvision.models.resnet50", tap_channels=1024, tap_size=14, cifar_tap_size=8,
                    weights="ResNet50_Weights.IMAGENET1K_V1", **_RESNET),
    "rx50": ArchSpec(constructor="torchvision.models.resnext50_32x4d", tap_channels=1024, tap_size=14,
                     cifar_tap_size=8, weights="ResNeXt50_32X4D_Weights.IMAGENET1K_V1", **_RESNET),
    # The tap: the 768-channel 7x7 map after the third patch merging, LayerNorm'd for the generator.
    "swin_t": ArchSpec(constructor="torchvision.models.swin_t", tap_channels=768, tap_size=7, size_multiple=32,
                       weights="Swin_T_Weights.IMAGENET1K_V1", drop_path=0.2,
                       options=dict(patch_size=[4, 4], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                    window_size=[7, 7]), **_SWIN),
    # The tap: the output of stage 3 (384 channels; 14x14 at 224 px, 8x8 with the CIFAR stem at 32).
    "convnext_t": ArchSpec(constructor="torchvision.models.convnext_tiny", tap_channels=384, tap_size=14,
                           cifar_tap_size=8, size_multiple=16, weights="ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
                           drop_path=0.3, **_CONVNEXT),
    # The tap: the patch tokens after block 6 of 12 as a 14x14 map (no norm).
    "deit_s": ArchSpec(constructor="timm deit_small_patch16_224", tap_channels=384, tap_size=14, image_size=224,
                       size_multiple=16, weights="deit_small_patch16_224.fb_in1k", drop_path=0.1, **_DEIT),
    # ---- the CIFAR networks (models/cifar_resnet.py, models/preact_resnet.py)
    "resnet20": ArchSpec(constructor="adautomix_fast.models.cifar_resnet.cifar_resnet(20)", options=dict(depth=20),
                         **_CIFAR_RESNET),
    "resnet32": ArchSpec(constructor="adautomix_fast.models.cifar_resnet.cifar_resnet(32)", options=dict(depth=32),
                         **_CIFAR_RESNET),
    "resnet56": ArchSpec(constructor="adautomix_fast.models.cifar_resnet.cifar_resnet(56)", options=dict(depth=56),
                         **_CIFAR_RESNET),
    "preact_r18": ArchSpec(constructor="adautomix_fast.models.preact_resnet.preact_resnet18", tap_channels=256,
                           tap_size=4, options=dict(blocks=(2, 2, 2, 2)), **_PREACT),
    # ---- test architectures: same classes, narrow and shallow
    "tiny": ArchSpec(constructor="adautomix_fast.models.TinyResNet", tap_channels=32, tap_size=14,
                     cifar_tap_size=8, weights=None, test_only=True, **_RESNET),
    "tiny_swin": ArchSpec(constructor="torchvision.models.swin_transformer.SwinTransformer", tap_channels=64,
                          tap_size=2, size_multiple=16, weights=None, test_only=True,
                          options=dict(patch_size=[2, 2], embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2],
                                       window_size=[2, 2]),
                          **dict(_SWIN, image_size=32)),
    "tiny_convnext": ArchSpec(constructor="torchvision.models.convnext.ConvNeXt", tap_channels=32, tap_size=2,
                              cifar_tap_size=8, size_multiple=16, weights=None, test_only=True,
                              options=dict(channels=(8, 16, 32, 64), depths=(1, 1, 2, 1)),
                              **dict(_CONVNEXT, image_size=32)),
    "tiny_deit": ArchSpec(constructor="timm.models.vision_transformer.VisionTransformer", tap_channels=16,
                          tap_size=8, image_size=32, size_multiple=4, weights=None, test_only=True,
                          options=dict(img_size=32, patch_size=4, embed_dim=16, depth=4, num_heads=2), **_DEIT),
    "tiny_preact": ArchSpec(constructor="adautomix_fast.models.preact_resnet.PreActResNet", tap_channels=32, tap_size=4,
                            options=dict(blocks=(1, 1, 1, 1), widths=(8, 16, 32, 64)), test_only=True, **_PREACT),
}

# The hand-wired --arch names: the published architectures first, then the test variants.
ARCH_NAMES = tuple(sorted(ARCH_SPECS, key=lambda arch: ARCH_SPECS[arch].test_only))


PREFIXES = {"timm/": "timm", "tv/": "torchvision"}
LIBRARY_IMAGE_SIZE = 224   # torchvision's models are defined at 224 px

# Models of a published recipe family, by library name: their generator settings (nearest
# upsampling and the lambda channel for ConvNeXt and ViT/DeiT), no-decay parameters and Grad-CAM
# layer follow that family; any other model takes the generic defaults (the data set's).
RECIPE_FAMILIES = {
    "resnet": ("resnet*", "resnext*", "wide_resnet*", "seresnet*", "seresnext*", "resnetv2*"),
    "convnext": ("convnext*",),
    "deit": ("deit*", "vit_*"),
}
_RECIPE_GENERATOR = {"resnet": (None, None), "convnext": ("nearest", True), "deit": ("nearest", True)}
_RECIPE_NO_DECAY = {"resnet": (), "convnext": ("gamma", "layer_scale"), "deit": ("pos_embed", "cls_token")}


def split_library_arch(arch) -> Optional[tuple[str, str]]:
    """("timm" | "torchvision", model name) for ``timm/<name>`` / ``tv/<name>``, else None."""
    if not isinstance(arch, str):
        return None
    for prefix, library in PREFIXES.items():
        if arch.startswith(prefix):
            return library, arch[len(prefix):]
    return None


def is_library_arch(arch) -> bool:
    return split_library_arch(arch) is not None


def recipe_family(name: str) -> Optional[str]:
    """The published recipe family a library model belongs to (None: generic defaults)."""
    for family, patterns in RECIPE_FAMILIES.items():
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            return family
    return None


def import_timm():
    """timm, or a one-line UsageError naming the install (timm is optional)."""
    try:
        import timm
    except ImportError as exc:
        raise UsageError(f"--arch timm/...: timm does not import here ({exc}); "
                         "pip install timm (or pip install -e \".[timm]\")") from None
    return timm


def check_library_name(library: str, name: str) -> None:
    if not name:
        raise UsageError(f"--arch {'timm' if library == 'timm' else 'tv'}/ needs a model name, e.g. "
                         f"{'timm/resnet50' if library == 'timm' else 'tv/mobilenet_v3_small'}")
    if library == "timm":
        timm = import_timm()
        if not timm.is_model(name):
            raise UsageError(f"unknown timm model {name!r}; "
                             f"python -c \"import timm; print(timm.list_models('*{name[:6]}*'))\" lists the names")
    elif name not in torchvision.models.list_models(module=torchvision.models):
        raise UsageError(f"unknown torchvision classification model {name!r}; choose one of "
                         "torchvision.models.list_models(module=torchvision.models) "
                         "(e.g. resnet50, mobilenet_v3_small)")


@functools.lru_cache(maxsize=None)
def library_spec(arch: str) -> ArchSpec:
    """The ArchSpec of ``timm/<name>`` / ``tv/<name>`` (a one-line UsageError for an unknown name
    or a missing timm). Tap channels and size are 0 here: they are read from the built model."""
    library, name = split_library_arch(arch)
    check_library_name(library, name)
    family = recipe_family(name)
    upsample, lam_concat = _RECIPE_GENERATOR.get(family, (None, None))
    image_size = LIBRARY_IMAGE_SIZE
    if library == "timm":
        cfg = import_timm().models.get_pretrained_cfg(name)
        if cfg is not None and getattr(cfg, "input_size", None):
            image_size = int(cfg.input_size[-1])
        weights, head = name, (getattr(cfg, "classifier", None) or "head") if cfg is not None else "head"
    else:
        try:
            weights = f"{torchvision.models.get_model_weights(name).__name__}.DEFAULT"
        except (ValueError, KeyError):
            weights = None
        head = "classifier"   # the real key is the replaced Linear's, set on the built classifier
    return ArchSpec(family="library", library=library, constructor=name, tap_channels=0, tap_size=0,
                    image_size=image_size, upsample=upsample, lam_concat=lam_concat, cifar_stem=False,
                    cifar_tap_size=None, size_multiple=1, fixed_size=False, weights=weights, head=head,
                    no_decay=_RECIPE_NO_DECAY.get(family, ()), options={"recipe": family})


def arch_spec(arch: str) -> ArchSpec:
    """The spec of ``arch``; a one-line UsageError naming the choices otherwise."""
    if is_library_arch(arch):
        return library_spec(arch)
    try:
        return ARCH_SPECS[arch]
    except (KeyError, TypeError):
        raise UsageError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCH_SPECS)}, "
                         "timm/<timm model> or tv/<torchvision model>") from None


def drop_path_rate(arch: str, value: Optional[float]) -> float:
    """The stochastic-depth rate to build ``arch`` with: ``value`` (``--drop-path``), or when None
    the architecture's published rate (0 for the ResNets, which have none; 0 for a library model
    or one's own module, whose library default applies)."""
    if value is not None:
        return float(value)
    source = getattr(arch, "source", arch)
    return arch_spec(source).drop_path if isinstance(source, str) else 0.0


def default_cifar_stem(image_size: int, arch: Optional[str] = None) -> bool:
    """The automatic stem choice: the CIFAR stem for images of 64 px or less, for architectures
    that have one (Swin and DeiT have none: they are trained at 224 px); at every size for the
    CIFAR ResNets, whose only stem it is."""
    if arch is not None and not arch_spec(arch).cifar_stem:
        return False
    if arch is not None and arch_spec(arch).cifar_stem_only:
        return True
    return image_size <= 64


def check_image_size(arch: str, image_size: int, cifar_stem: Optional[bool] = None) -> None:
    """One-line UsageError when ``arch`` cannot take ``image_size`` px images (``cifar_stem``
    None: the automatic choice).

    * DeiT: its learned position table fixes the size.
    * Swin: the size must be a multiple of its total stride (32 for Swin-T): the tap (image / 32,
      7x7 at 224) must tile the image, otherwise the patch merging pads the map and the generator
      reads padding (at 16 px, Swin-T's tap would be one padded pixel).
    * ConvNeXt without the CIFAR stem: at least twice the tap's stride (32 px for ConvNeXt-T): its
      unpadded 2x2 downsampling before stage 4 needs a 2x2 stage-3 map.
    * The CIFAR ResNets: only their CIFAR stem (``--no-cifar-stem`` is refused).
    The ResNets pad every strided layer and take any size the config allows.
    """
    spec = arch_spec(arch)
    if spec.family == "library":   # read from the built model: library.check_backbone_image_size
        return
    fix = f"pass --img-size {spec.image_size}" + (" as its presets do" if not spec.test_only else "")
    if spec.fixed_size and image_size != spec.image_size:
        raise UsageError(f"--arch {arch} takes {spec.image_size} px images only (its position table is "
                         f"learned at that size), got {image_size}: pass --img-size {spec.image_size}")
    if spec.family == "swin" and image_size % spec.size_multiple:
        raise UsageError(f"--arch {arch} needs an image size that is a multiple of {spec.size_multiple} (its "
                         f"generator tap is the image / {spec.size_multiple}), got {image_size}: {fix}")
    stem = default_cifar_stem(image_size, arch) if cifar_stem is None else cifar_stem
    if spec.cifar_stem_only and not stem:
        raise UsageError(f"--arch {arch} has only its 3x3 stride-1 CIFAR stem (He et al.'s CIFAR network): "
                         "drop --no-cifar-stem")
    if spec.family == "convnext" and not stem and image_size < 2 * spec.size_multiple:
        raise UsageError(f"--arch {arch} without the CIFAR stem needs images of at least {2 * spec.size_multiple} "
                         f"px, got {image_size}: use --cifar-stem, or {fix}")
