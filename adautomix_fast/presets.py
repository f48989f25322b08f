"""The published recipe tables: each data set's defaults, the named presets, the released
configuration behind each preset, and the text ``--help`` prints from them.

A method's own published settings (lambda's concentration, AdAutoMix's generator, AutoMix's
mask loss) are declared by its class (``methods/``); the tables here hold the engine's settings
(schedule, batch, EMA, recipe) per data set, and the few method values that one data set's
released configuration changes (Tiny-ImageNet's beta), which apply only to the methods that
take them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from . import registry
from .methods.options import FAMILIES, Option

# Dataset-level defaults: the published setting of each family (docs/algorithm.md, Published
# settings), applied before a preset and before explicit flags.
_CIFAR_LIKE = dict(lr=0.1, batch_size=100, ema_end=0.999999)
# ImageNet: the mix block has its own lr, annealed by its own cosine.
_IMAGENET_LIKE = dict(lr=0.1, batch_size=256, min_lr=0.0, gen_lr=0.1, gen_min_lr=0.001, ema_end=0.99999)

# SGD lr 1e-3 (momentum 0.9, wd 5e-4) cosine to 0 by epoch, batch 16, 200 epochs; the mix block's
# lr 0.1 with its own cosine to 1e-3; EMA to 0.99999.
_FINEGRAINED = dict(lr=1e-3, min_lr=0.0, momentum=0.9, weight_decay=5e-4, batch_size=16, epochs=200,
                    gen_lr=0.1, gen_min_lr=1e-3, ema_end=0.99999)

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # The bundled default is a demo of 84 steps (3 epochs of 28 batches of 50), too short for the
    # published EMA schedule, so it is scaled to the run's length (docs/algorithm.md, EMA teacher).
    # With momentum 0.9 -> 0.99 the teacher averages the last ~10-100 steps instead of staying at
    # its initial weights.
    # lr 0.1 makes ResNet-18 diverge in the first steps on this tiny set (no warm-up); 0.02 with
    # batch 50 learns. 16 px (the 8x8 digits upsampled twice; the loaders' native 32 px adds no
    # detail): a quarter of the 32 px cost, so the demo stays a few minutes on a 2-core CPU
    # without native bf16 (fp32: 2.0 s/step at 16 px vs 6.9 s at 32 px, AVX2, torch 2.14.1),
    # at the same accuracy (teacher top-1 95.6% at 16 px, 93.9% at 32 px).
    # ME-ADA's first generation round after one epoch instead of ten (a method value, as beta below).
    "digits": dict(_CIFAR_LIKE, img_size=16, epochs=3, batch_size=50, lr=0.02, min_lr=0.0, ema_start=0.9,
                   ema_end=0.99, meada_every=2),
    "cifar10": dict(_CIFAR_LIKE, min_lr=0.05, epochs=800),
    "cifar100": dict(_CIFAR_LIKE, min_lr=0.05, epochs=800),
    # The released Tiny config gives the mix block its own lr (paramwise lr 0.1 vs 0.2), annealed
    # by the same cosine to 0, and AdAutoMix's beta 0.4 (a method value: methods without it ignore it).
    "tiny-imagenet": dict(_CIFAR_LIKE, beta=0.4, lr=0.2, min_lr=0.0, gen_lr=0.1, gen_min_lr=0.0, epochs=400),
    "imagenet": dict(_IMAGENET_LIKE, epochs=100),
    "folder": dict(_IMAGENET_LIKE, epochs=100),
    # Fine-grained fine-tuning (paper 4.1.2 / A.2, the released cub200, aircrafts and cars configs).
    "cub200": dict(_FINEGRAINED),
    "aircraft": dict(_FINEGRAINED),
    "cars": dict(_FINEGRAINED),
}

# The CIFAR-100 transformer recipes (released swin_t_l3 / deit_s_l6 AdAutoMix configs): 224 px
# (RandomResizedCrop scale 0.8-1, bicubic, flip, RandAugment 2 ops m7 std 0.5; test: resize),
# AdamW wd 0.05 (none on norms, biases, position tables), per-step cosine to 1e-4 after a linear
# warm-up from 1e-5 x lr, batch 100, 200 epochs, EMA 0.999 -> 0.99996 after the first 25%, label
# smoothing 0.1 on both heads. The generator's settings (nearest upsampling with a lambda
# channel, G trained on 80% of the steps) are AdAutoMix's published ones for this family.
_TRANSFORMER_CIFAR = dict(
    dataset="cifar100", img_size=224, epochs=200, batch_size=100, optimizer="adamw", weight_decay=0.05, min_lr=1e-4,
    gen_min_lr=1e-4, lr_per_step=True, warmup_ratio=1e-5, ema_start=0.999, ema_end=0.99996, ema_warmup=0.25,
    randaugment="rand-m7-n2-mstd0.5", train_crop="rrc", crop_scale=0.8, interpolation="bicubic",
    label_smoothing=0.1,
)

# Named presets: the published settings (docs/algorithm.md, Published settings). CIFAR presets
# train the paper's 800 epochs (the released config file says 400: pass --epochs 400 for it).
PRESETS: dict[str, dict[str, Any]] = {
    "digits-r18": dict(dataset="digits", arch="r18"),
    "cifar100-r18": dict(dataset="cifar100", arch="r18", epochs=800),
    "cifar100-rx50": dict(dataset="cifar100", arch="rx50", epochs=800),
    "tiny-r18": dict(dataset="tiny-imagenet", arch="r18", epochs=400),
    "tiny-rx50": dict(dataset="tiny-imagenet", arch="rx50", epochs=400, min_lr=0.05, gen_min_lr=1e-3),
    "imagenet-r18": dict(dataset="imagenet", arch="r18", epochs=100),
    # the paper's ResNet-34 column: the ResNet-18 recipe (no released config of its own)
    "imagenet-r34": dict(dataset="imagenet", arch="r34", epochs=100),
    "imagenet-r50": dict(dataset="imagenet", arch="r50", epochs=100),
    # ---- transformers and ConvNeXt on CIFAR-100 (released configs and logs; docs/archs.md)
    "cifar100-swin_t": dict(_TRANSFORMER_CIFAR, arch="swin_t", lr=5e-4, gen_lr=1e-3, warmup_epochs=20,
                            clip_grad=10.0, drop_path=0.2),
    "cifar100-deit_s": dict(_TRANSFORMER_CIFAR, arch="deit_s", lr=5e-4, gen_lr=1e-3, warmup_epochs=5,
                            clip_grad=10.0, drop_path=0.1),
    # The ConvNeXt_CIFAR run of the released log: 32 px with its 3x3 stride-1 stem, reflect-padded
    # crops; mix block lr 5e-4 (the log; the config file in the repository says 2e-3), no clipping,
    # lam_margin 0 (the config).
    "cifar100-convnext_t": dict(_TRANSFORMER_CIFAR, arch="convnext_t", img_size=32, cifar_stem=True, lr=2e-3,
                                gen_lr=5e-4, warmup_epochs=20, clip_grad=None, lam_margin=0.0, drop_path=0.3,
                                train_crop="pad-reflect", crop_scale=None, interpolation=None),
    # ---- fine-grained fine-tuning from torchvision's ImageNet weights (paper Table 2)
    # N drawn from 2..3 every step where the released config sets is_random (CUB R18, Aircraft).
    "cub-r18": dict(dataset="cub200", arch="r18", beta=0.3, random_mix_samples=True, pretrained="imagenet"),
    "cub-r50": dict(dataset="cub200", arch="r50", beta=0.1, pretrained="imagenet"),
    "aircraft-r18": dict(dataset="aircraft", arch="r18", beta=0.3, lam_margin=0.0, min_lr=5e-4,
                         random_mix_samples=True, pretrained="imagenet"),
    "aircraft-rx50": dict(dataset="aircraft", arch="rx50", beta=0.6, random_mix_samples=True, pretrained="imagenet"),
    "cars-r18": dict(dataset="cars", arch="r18", beta=0.5, pretrained="imagenet"),
    "cars-rx50": dict(dataset="cars", arch="rx50", beta=0.3, pretrained="imagenet"),
    # ---- transfer (paper Table 3): an ImageNet-trained R50 fine-tuned 100 epochs with the same
    # settings (alpha 0.5, beta 0.1: appendix A.2). Pass --pretrained PATH (e.g. the --export of an
    # imagenet-r50 run); the default "imagenet" is torchvision's weights.
    "cub-r50-transfer": dict(dataset="cub200", arch="r50", beta=0.1, epochs=100, pretrained="imagenet"),
    "cars-r50-transfer": dict(dataset="cars", arch="r50", beta=0.1, epochs=100, pretrained="imagenet"),
}

# The paper's Table 11 (adversarial and learned augmentation beside MixUp and AdAutoMix; CIFAR-100,
# ResNet-18, the 200-epoch recipe): one preset per row, its published top-1 in TABLE11_PUBLISHED.
# SADA (the spectral method's core, which the paper's "SAMix" row most likely is) has a preset too,
# without a published number of its own.
TABLE11_PUBLISHED = {"vanilla": 76.42, "mixup": 78.52, "dada": 78.86, "meada": 77.45, "samix": 54.01,
                     "adautomix": 81.55}
for _method in (*TABLE11_PUBLISHED, "sada"):
    PRESETS[f"table11-{_method}"] = dict(dataset="cifar100", arch="r18", epochs=200, method=_method)

# The paper's comparison runs: every baseline and AutoMix on each published setting, e.g.
# cifar100-r18-mixup (the same data, schedule and budget; the method's own published options).
COMPARISON_PRESETS: dict[str, str] = {}   # name -> the preset it is made from
for _base in ("cifar100-r18", "cifar100-rx50", "tiny-r18", "tiny-rx50", "imagenet-r18", "imagenet-r34",
              "imagenet-r50"):
    for _method in registry.BASELINES + ("automix",):
        PRESETS[f"{_base}-{_method}"] = dict(PRESETS[_base], method=_method)
        COMPARISON_PRESETS[f"{_base}-{_method}"] = _base

# The released configuration each preset reproduces (github.com/JinXins/Adversarial-AutoMixup,
# configs/classification/...), for the README and `--help`.
PRESET_SOURCES: dict[str, str] = {
    "cifar100-r18": "cifar100/basic/r18_adautomix_bilinear.py",
    "cifar100-rx50": "cifar100/basic/rx50_adautomix.py",
    "tiny-r18": "tiny_imagenet/adautomix/basic/r18_adautomix_blinear.py",
    "tiny-rx50": "tiny_imagenet/adautomix/basic/rx50_adautomix_bilinear.py",
    "imagenet-r18": "imagenet/adautomix/basic/r18_adautomix_bilinear.py",
    "imagenet-r50": "imagenet/adautomix/basic/r50_adautomix_bilinear.py",
}
# The architecture and fine-grained presets, from OpenMixup's copies of the released configs
# (github.com/Westlake-AI/openmixup, configs/classification/...) and the released training logs.
PRESET_SOURCES.update({
    "cifar100-swin_t": "openmixup: cifar100/adautomix/vit/swin_t_l3_a1_near_sz224_mlr1e_4_bs100_ep200.py",
    "cifar100-deit_s": "openmixup: cifar100/adautomix/vit/deit_s_l6_a1_near_sz224_mlr1e_4_bs100_ep200.py",
    "cifar100-convnext_t": "the released ConvNeXt_CIFAR training log",
    "cub-r18": "openmixup: cub200/adautomix/r18_adautomix_bilinear.py",
    "cub-r50": "openmixup: cub200/adautomix/r50_adautomix_bilinear.py",
    "aircraft-r18": "openmixup: aircrafts/adautomix/basic/r18_adautomix_bilinear.py",
    "aircraft-rx50": "openmixup: aircrafts/adautomix/basic/rx50_adautomix_bilinear.py",
    "cars-r18": "openmixup: cars/adautomix/basic/r18_adautomix_bilinear.py",
    "cars-rx50": "openmixup: cars/adautomix/basic/rx50_adautomix_bilinear.py",
})

# The published architectures whose method rules --help lists (the test variants have none).
_PUBLISHED_ARCHS = ("r18", "r34", "r50", "rx50", "swin_t", "convnext_t", "deit_s", "resnet20", "preact_r18")


# ---------------------------------------------------------------------------- --help's defaults
def _grouped(pairs: Iterable[tuple[str, Any]], option: Option) -> str:
    """"digits 0.02, tiny-imagenet 0.2, cub200/aircraft/cars 0.001": names with one value joined."""
    by_value: dict[str, list[str]] = defaultdict(list)
    for name, value in pairs:
        by_value[option.value_text(value)].append(name)
    return ", ".join(f"{'/'.join(names)} {text}" for text, names in by_value.items())


def _preset_exceptions(option: Option, base_of) -> str:
    """The presets (not the generated comparison ones) that set ``option`` to another value than
    their data set's (``base_of(preset values)``); not for the keys that name a preset."""
    if option.name in ("dataset", "arch"):
        return ""
    pairs = [(name, values[option.name]) for name, values in PRESETS.items()
             if name not in COMPARISON_PRESETS and option.name in values
             and values[option.name] != base_of(values)]
    return f"; presets: {_grouped(pairs, option)}" if pairs else ""


def engine_default_text(option: Option) -> str:
    """An engine setting's default as --help prints it, from the tables that apply it: the
    declared default, each data set's where it differs, and the presets that change it."""
    base = option.default
    datasets = [(ds, values[option.name]) for ds, values in DATASET_DEFAULTS.items()
                if option.name in values and values[option.name] != base]
    text = option.value_text(base) + (f"; {_grouped(datasets, option)}" if datasets else "")

    def dataset_value(values: dict) -> Any:
        return DATASET_DEFAULTS.get(values.get("dataset", "digits"), {}).get(option.name, base)
    return text + _preset_exceptions(option, dataset_value)


def method_default_text(option: Option, cls) -> str:
    """A method option's default as --help prints it: the method's published value per family,
    the architectures and data sets whose published value differs, and the presets."""
    family_values = {family: cls.published_defaults(family, "r18").get(option.name, option.default)
                     for family in FAMILIES}
    distinct = list(dict.fromkeys(option.value_text(v) for v in family_values.values()))
    if len(distinct) == 1:
        text = distinct[0]
    else:
        text = _grouped(family_values.items(), option)
    arch_values = {arch: {family: cls.published_defaults(family, arch).get(option.name, option.default)
                          for family in FAMILIES} for arch in _PUBLISHED_ARCHS}
    arch_rules = []
    for arch, values in arch_values.items():
        differs = [family for family in FAMILIES if values[family] != family_values[family]]
        if differs and len(set(map(repr, values.values()))) == 1:     # the trunk's value on every family
            arch_rules.append((arch, values[differs[0]]))
        else:
            arch_rules += [(f"{family} {arch}", values[family]) for family in differs]
    if arch_rules:
        text += f"; {_grouped(arch_rules, option)}"
    datasets = [(ds, values[option.name]) for ds, values in DATASET_DEFAULTS.items() if option.name in values]
    if datasets:
        text += f"; {_grouped(datasets, option)}"

    def published_value(values: dict) -> Any:
        dataset = values.get("dataset", "digits")
        if option.name in DATASET_DEFAULTS.get(dataset, {}):
            return DATASET_DEFAULTS[dataset][option.name]
        family = registry.data_family(dataset, values.get("arch", "r18"))
        return cls.published_defaults(family, values.get("arch", "r18")).get(option.name, option.default)
    return text + _preset_exceptions(option, published_value)


def preset_help() -> str:
    """The presets for --help's epilog."""
    return ", ".join(name for name in PRESETS if name not in COMPARISON_PRESETS) + \
        " (and <preset>-<method> for every baseline and AutoMix on the seven published CNN settings of Table 1)"


__all__ = ["COMPARISON_PRESETS", "DATASET_DEFAULTS", "PRESETS", "PRESET_SOURCES", "engine_default_text",
           "method_default_text", "preset_help"]
