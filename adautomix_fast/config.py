"""Run configuration: one dataclass, named presets for the published settings.

Precedence when the CLI resolves a run: dataclass defaults < dataset defaults < preset <
flags given explicitly on the command line. The resolved config is printed and saved in the
run folder (``config.yaml``) before the first step, and its fingerprint is stored in every
checkpoint so a checkpoint of another configuration is refused on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from . import registry
from .errors import UsageError
from .models.specs import ARCH_SPECS, arch_spec, check_image_size, is_library_arch

# The hand-wired --arch names: the table of models.ARCH_SPECS itself (docs/archs.md), the
# published architectures first, then the test variants.
ARCHS = tuple(sorted(ARCH_SPECS, key=lambda arch: ARCH_SPECS[arch].test_only))
DATASETS = ("digits", "cifar10", "cifar100", "tiny-imagenet", "imagenet", "folder",
            "cub200", "aircraft", "cars")
IMPLS = ("auto", "reference", "fused")
AMP_DTYPES = ("bf16", "fp16")
DATA_BACKENDS = ("auto", "torch", "dali")
GEN_KERNELS = ("auto", "torch", "triton")
UPSAMPLES = ("bilinear", "nearest")
STUDENT_PASSES = ("batched", "separate")
TEACHER_BN_STATS = ("exact", "single")
TRAIN_CROPS = ("pad", "pad-reflect", "rrc")
INTERPOLATIONS = ("bilinear", "bicubic")

# The concerns a setting belongs to (each field's ``group`` metadata).
DATA, MODEL, GENERATOR, METHOD, OPTIMIZATION, PRECISION, RUN = (
    "data", "model", "generator", "method", "optimization", "precision", "run")


def setting(default: Any, group: str, identity: bool = False):
    """A config field: its default, its concern, and whether it defines *what* is trained (a
    checkpoint may be resumed with another output folder, worker count or log interval, but not
    with another model or algorithm: ``identity``)."""
    return field(default=default, metadata={"group": group, "identity": identity})


@dataclass
class RunSettings:
    """The engine's own settings; ``Config`` adds one field per method option (the registry's)."""

    # --- data
    dataset: str = setting("digits", DATA, identity=True)
    data_dir: Optional[str] = setting(None, DATA)
    img_size: Optional[int] = setting(None, DATA, identity=True)   # None: the data set's native training size
    workers: int = setting(2, DATA)
    data_backend: str = setting("auto", DATA)     # auto: dali when DALI imports and the device is CUDA, else torch
    skip_corrupt: bool = setting(False, DATA)     # skip (and count) unreadable image files instead of stopping
    randaugment: Optional[str] = setting(None, DATA, identity=True)     # e.g. "rand-m7-n2-mstd0.5"
    train_crop: Optional[str] = setting(None, DATA, identity=True)      # pad | pad-reflect | rrc (None: the data set's)
    crop_scale: Optional[float] = setting(None, DATA, identity=True)    # RandomResizedCrop's minimum area
    interpolation: Optional[str] = setting(None, DATA, identity=True)   # bilinear | bicubic (None: the data set's)
    # train on a fixed class-balanced subset of this many training images (None: all), the same
    # images for every seed and method (data/subset.py)
    train_subset: Optional[int] = setting(None, DATA, identity=True)
    # --- model
    arch: str = setting("r18", MODEL, identity=True)       # or timm/<name>, tv/<name>
    tap: Optional[int] = setting(None, MODEL, identity=True)   # timm/tv: the stage G reads (None: stride 16)
    cifar_stem: Optional[bool] = setting(None, MODEL, identity=True)    # None: automatic (images of 64 px or less)
    drop_path: Optional[float] = setting(None, MODEL, identity=True)    # None: the architecture's published rate
    # weights file or name ("imagenet") for the student and teacher; not identity: a resumed run
    # already holds the weights, wherever they came from
    pretrained: Optional[str] = setting(None, MODEL)
    # --- generator (docs/algorithm.md, Generator): AdAutoMix's and AutoMix's mix block
    mix_samples: int = setting(3, GENERATOR, identity=True)
    lam_concat: bool = setting(False, GENERATOR, identity=True)
    gen_norm: bool = setting(False, GENERATOR, identity=True)
    upsample: str = setting("bilinear", GENERATOR, identity=True)
    gen_kernels: str = setting("auto", GENERATOR)   # auto: Triton kernels with the fused impl on CUDA, else PyTorch
    beta: float = setting(0.3, GENERATOR, identity=True)
    alpha: float = setting(0.5, GENERATOR, identity=True)
    lam_margin: float = setting(0.03, GENERATOR, identity=True)
    # --- method (docs/methods.md): AdAutoMix or a baseline; each method's own options follow
    method: str = setting("adautomix", METHOD, identity=True)
    mix_alpha: Optional[float] = setting(None, METHOD, identity=True)   # lambda's Beta(a, a); None: the method's published default
    label_smoothing: float = setting(0.0, METHOD, identity=True)
    # --- optimisation
    epochs: int = setting(3, OPTIMIZATION, identity=True)
    batch_size: int = setting(100, OPTIMIZATION, identity=True)
    eval_batch_size: Optional[int] = setting(None, OPTIMIZATION)        # None: same as batch_size
    optimizer: str = setting("sgd", OPTIMIZATION, identity=True)        # sgd | adamw (the transformer/ConvNeXt recipes)
    lr: float = setting(0.1, OPTIMIZATION, identity=True)
    min_lr: float = setting(0.0, OPTIMIZATION, identity=True)
    momentum: float = setting(0.9, OPTIMIZATION, identity=True)
    weight_decay: float = setting(1e-4, OPTIMIZATION, identity=True)
    adam_beta1: float = setting(0.9, OPTIMIZATION, identity=True)       # AdamW betas and eps (the released 0.9, 0.999, 1e-8)
    adam_beta2: float = setting(0.999, OPTIMIZATION, identity=True)
    adam_eps: float = setting(1e-8, OPTIMIZATION, identity=True)
    wd_exclude: Optional[bool] = setting(None, OPTIMIZATION, identity=True)  # no decay on norms, biases, position tables (None: on with adamw)
    gen_lr: Optional[float] = setting(None, OPTIMIZATION, identity=True)     # None: G shares the student's lr and schedule
    gen_min_lr: Optional[float] = setting(None, OPTIMIZATION, identity=True)
    lr_per_step: bool = setting(False, OPTIMIZATION, identity=True)     # released configs anneal per epoch
    warmup_epochs: float = setting(0.0, OPTIMIZATION, identity=True)    # linear warm-up (0: none), then the cosine
    warmup_ratio: float = setting(1e-5, OPTIMIZATION, identity=True)    # warm-up starts at this fraction of the lr (mmcv's ratio)
    clip_grad: Optional[float] = setting(None, OPTIMIZATION, identity=True)  # total L2 norm (None: no clipping)
    # EMA teacher (docs/algorithm.md, EMA teacher)
    ema_start: float = setting(0.999, OPTIMIZATION, identity=True)
    ema_end: float = setting(0.999999, OPTIMIZATION, identity=True)
    ema_warmup: float = setting(0.1, OPTIMIZATION, identity=True)       # fraction of training at constant ema_start
    # --- precision, layout and step implementation
    amp: Optional[bool] = setting(None, PRECISION)   # None: bf16 where the device computes it natively, else fp32
    amp_dtype: str = setting("bf16", PRECISION)
    channels_last: Optional[bool] = setting(None, PRECISION)            # None: on with CUDA, off on CPU
    impl: str = setting("auto", PRECISION)                              # auto: fused on CUDA, reference on CPU
    student_passes: str = setting("batched", PRECISION)     # fused impl: one [3B] pass with segmented BN, or "separate"
    teacher_bn_stats: str = setting("exact", PRECISION)     # fused impl: replay the reference's BN updates, or "single"
    compile_mode: Optional[str] = setting(None, PRECISION)  # fused impl: torch.compile mode (None: reduce-overhead on CUDA)
    compile_backend: str = setting("inductor", PRECISION)   # fused impl: torch.compile backend (aot_eager: trace only)
    device: str = setting("auto", PRECISION)
    # --- run
    seed: int = setting(0, RUN, identity=True)
    output: str = setting("runs", RUN)
    run_name: Optional[str] = setting(None, RUN)
    log_interval: int = setting(20, RUN)
    save_every_steps: int = setting(0, RUN)         # also checkpoint every N steps (0: at epoch ends only)
    vis_every: Optional[int] = setting(None, RUN)   # mixed-sample pictures every N epochs (None: ~10 per run, 0: never)
    tensorboard: bool = setting(False, RUN)         # mirror every log record into <run>/tensorboard
    sync_bn: bool = setting(False, RUN)             # SyncBatchNorm across ranks (reference impl, CUDA)
    preset: Optional[str] = setting(None, RUN)
    notes: str = setting("", RUN)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """A Config from settings of any source (flags, YAML, a checkpoint), each value checked
        against its field's declared type first: one line naming the key and the expected type."""
        known = {f.name for f in fields(cls)}
        bad_keys = [k for k in d if not isinstance(k, str)]
        if bad_keys:
            raise UsageError(f"config key {bad_keys[0]!r} is not a name; keys are config names such as lr or batch_size")
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**{k: checked_value(k, v) for k, v in d.items()})

    @classmethod
    def identity_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("identity"))

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in type(self).IDENTITY}

    def fingerprint(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> None:
        """Raise a one-line UsageError for impossible values or combinations."""
        if is_library_arch(self.arch):
            arch_spec(self.arch)   # an unknown model name, or timm missing: one line
        else:
            _check_choice(self.arch, ARCHS, "unknown --arch {value!r}; choose one of {choices}, "
                                            "timm/<timm model> or tv/<torchvision model>")
        if self.tap is not None and not is_library_arch(self.arch):
            raise UsageError(f"--tap chooses the generator's stage of a timm/ or tv/ architecture; --arch {self.arch} "
                             "has its published tap: drop --tap")
        if self.tap is not None and self.tap < 0:
            raise UsageError(f"--tap must be a stage index, 0 or more (got {self.tap})")
        _check_choice(self.dataset, DATASETS, "unknown --dataset {value!r}; choose one of {choices}")
        if not 2 <= self.mix_samples <= 5:
            raise UsageError(f"--mix-samples must be between 2 and 5 (got {self.mix_samples}): "
                             "AdAutoMix mixes at least two images")
        if self.batch_size < 2:
            raise UsageError(f"--batch-size must be at least 2 (got {self.batch_size}): "
                             "train-mode BatchNorm and mixing need several images per batch")
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise UsageError(f"need 0 <= --min-lr <= --lr and --lr > 0 (got lr={self.lr}, min_lr={self.min_lr})")
        if self.gen_min_lr is not None and self.gen_lr is None:
            raise UsageError("--gen-min-lr needs --gen-lr (the generator's own parameter group)")
        if not 0.0 <= self.beta <= 1.0:
            raise UsageError(f"--beta must be in [0, 1] (got {self.beta})")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be in [0, 1] (got {self.alpha})")
        if not 0.0 <= self.lam_margin < 0.5:
            raise UsageError(f"--lam-margin must be in [0, 0.5) (got {self.lam_margin})")
        for name in ("ema_start", "ema_end"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1] (got {v})")
        if not 0.0 <= self.ema_warmup <= 1.0:
            raise UsageError(f"--ema-warmup must be a fraction in [0, 1] (got {self.ema_warmup})")
        _check_choice(self.upsample, UPSAMPLES, "--upsample must be bilinear or nearest (got {value!r})")
        _check_choice(self.amp_dtype, AMP_DTYPES, "--amp-dtype must be one of {choices} (got {value!r})")
        _check_choice(self.data_backend, DATA_BACKENDS,
                      "--data-backend must be one of {choices} (got {value!r})")
        _check_choice(self.gen_kernels, GEN_KERNELS, "--gen-kernels must be one of {choices} (got {value!r})")
        _check_choice(self.impl, IMPLS, "--impl {value!r} is not available; choose one of {choices}")
        _check_choice(self.student_passes, STUDENT_PASSES,
                      "--student-passes must be batched or separate (got {value!r})")
        _check_choice(self.teacher_bn_stats, TEACHER_BN_STATS,
                      "--teacher-bn-stats must be exact or single (got {value!r})")
        if self.run_name is not None:
            check_single_folder_name(self.run_name, "--run-name", "--output")
        if self.train_subset is not None and self.train_subset < 2:
            raise UsageError(f"--train-subset must be at least 2 images (got {self.train_subset}): a classifier "
                             "needs two classes; leave it out to train on every image")
        if self.img_size is not None and self.img_size < 8:
            raise UsageError(f"--img-size must be at least 8 (got {self.img_size})")
        self._validate_method()
        if self.vis_every is not None and self.vis_every < 0:
            raise UsageError(f"--vis-every must be >= 0 (got {self.vis_every}; 0 turns the pictures off)")
        if self.save_every_steps < 0:
            raise UsageError(f"--save-every-steps must be >= 0 (got {self.save_every_steps})")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")
        if self.log_interval < 1:
            raise UsageError(f"--log-interval must be at least 1 (got {self.log_interval})")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise UsageError(f"--eval-batch-size must be at least 1 (got {self.eval_batch_size})")
        if not 0 <= self.seed < 2 ** 63:
            raise UsageError(f"--seed must be a non-negative whole number below 2**63 (got {self.seed})")
        if not 0.0 <= self.momentum < 1.0:
            raise UsageError(f"--momentum must be in [0, 1) (got {self.momentum})")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if self.gen_lr is not None and (self.gen_lr <= 0 or (self.gen_min_lr is not None
                                                             and not 0 <= self.gen_min_lr <= self.gen_lr)):
            raise UsageError(f"need 0 <= --gen-min-lr <= --gen-lr and --gen-lr > 0 (got gen_lr={self.gen_lr}, "
                             f"gen_min_lr={self.gen_min_lr})")
        validate_recipe(self)

    def _validate_method(self) -> None:
        registry.method_class(self.method)   # one line naming the choices for an unknown method
        if self.mix_alpha is not None and self.mix_alpha <= 0:
            raise UsageError(f"--mix-alpha must be > 0 (got {self.mix_alpha}): it is lambda's Beta(a, a) concentration")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        registry.check_method(self)


def check_single_folder_name(name: str, flag: str, parent_flag: str) -> None:
    """A folder name made inside the parent folder, never a path out of it: ``../x`` or ``/x``
    would write beside or far from ``--output`` without a word."""
    if (not name or name in (".", "..") or "/" in name or (os.sep != "/" and os.sep in name)
            or (os.altsep and os.altsep in name) or "\0" in name):
        raise UsageError(f"{flag} {name!r} must be a single folder name (no '/', not '.' or '..'); "
                         f"{parent_flag} DIR says where it is made")


def _check_choice(value: Any, choices: tuple[str, ...], message: str) -> None:
    if value not in choices:
        raise UsageError(message.format(value=value, choices=", ".join(choices)))


# The run configuration: the engine's settings plus every method's options, each a field of the
# declared type and default, marked as identity when the option changes what is trained.
Config = dataclasses.make_dataclass(
    "Config",
    [(o.name, o.annotation, field(default=o.default, metadata={"group": METHOD, "identity": o.identity,
                                                                "option": o}))
     for o in registry.OPTIONS.values()],
    bases=(RunSettings,),
    namespace={"__doc__": "One run's settings (module docstring): RunSettings plus every method's options."},
)
Config.__module__ = __name__
# The fields that define what is trained (checkpoint.check_compatible compares them on resume).
Config.IDENTITY = Config.identity_fields()


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _setting(key: str) -> str:
    return f"--{key.replace('_', '-')} (config key {key})"


def checked_value(key: str, value: Any) -> Any:
    """``value`` as the type declared for ``key`` (an int is a valid float), or a UsageError:
    bools are not numbers, floats must be finite, whole-number fields take no fraction."""
    declared = _field_types()[key]
    optional = type(None) in typing.get_args(declared)
    base = next((a for a in typing.get_args(declared) if a is not type(None)), declared) if optional else declared
    if value is None:
        if optional:
            return None
        raise UsageError(f"{_setting(key)} needs a value (got none)")
    if base is bool:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "a whole number"
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            expected = "a finite number"
        else:
            expected = "a number"
    elif base is str:
        if isinstance(value, str):
            return value
        expected = "a string"
    else:   # no other field types exist; a new one must be added here
        raise TypeError(f"config field {key} has an unsupported type {declared}")
    if optional:
        expected += " or none"
    raise UsageError(f"{_setting(key)} must be {expected} (got {value!r})")


# Dataset-level defaults: the published setting of each family (docs/algorithm.md, Published
# settings), applied before a preset and before explicit flags.
_CIFAR_LIKE = dict(mix_samples=3, beta=0.3, alpha=0.5, lam_concat=False, gen_norm=False,
                   lr=0.1, batch_size=100, ema_end=0.999999)
# ImageNet: the generator has BatchNorm only with the ResNet-50 trunk (the released R50 config sets
# att_norm_cfg=BN in the mix block, the R18 config does not): see ARCH_DATASET_DEFAULTS.
_IMAGENET_LIKE = dict(mix_samples=2, beta=0.1, alpha=0.5, lam_concat=True, gen_norm=False,
                      lr=0.1, batch_size=256, min_lr=0.0, gen_lr=0.1, gen_min_lr=0.001,
                      ema_end=0.99999)

# SGD lr 1e-3 (momentum 0.9, wd 5e-4) cosine to 0 by epoch, batch 16, 200 epochs; the mix block's
# lr 0.1 with its own cosine to 1e-3; AdaptiveMask(lam_concat=True, bilinear), no BN; EMA to 0.99999.
_FINEGRAINED = dict(mix_samples=3, beta=0.3, alpha=0.5, lam_concat=True, gen_norm=False, upsample="bilinear",
                    lr=1e-3, min_lr=0.0, momentum=0.9, weight_decay=5e-4, batch_size=16, epochs=200,
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
    "digits": dict(_CIFAR_LIKE, img_size=16, epochs=3, batch_size=50, lr=0.02, min_lr=0.0, ema_start=0.9,
                   ema_end=0.99),
    "cifar10": dict(_CIFAR_LIKE, min_lr=0.05, epochs=800),
    "cifar100": dict(_CIFAR_LIKE, min_lr=0.05, epochs=800),
    # The released Tiny config gives the mix block its own lr (paramwise lr 0.1 vs 0.2), annealed
    # by the same cosine to 0.
    "tiny-imagenet": dict(_CIFAR_LIKE, beta=0.4, lr=0.2, min_lr=0.0, gen_lr=0.1, gen_min_lr=0.0, epochs=400),
    "imagenet": dict(_IMAGENET_LIKE, epochs=100),
    "folder": dict(_IMAGENET_LIKE, epochs=100),
    # Fine-grained fine-tuning (paper 4.1.2 / A.2, the released cub200, aircrafts and cars configs).
    "cub200": dict(_FINEGRAINED),
    "aircraft": dict(_FINEGRAINED),
    "cars": dict(_FINEGRAINED),
}

# Defaults that depend on the data set *and* the architecture, applied after DATASET_DEFAULTS:
# with 224 px ImageNet-like data, BatchNorm in the generator for the bottleneck trunks (the
# released ImageNet R50 config; rx50 has the same 1024-channel stage 3 and follows it).
ARCH_DATASET_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    (dataset, arch): dict(gen_norm=True) for dataset in ("imagenet", "folder") for arch in ("r50", "rx50")
}


def arch_generator(arch: str) -> dict[str, Any]:
    """The generator's published settings for ``arch`` (``ARCH_SPECS``): upsampling mode and
    ``lam_concat`` where the architecture fixes them (Swin, ConvNeXt, DeiT), else nothing (the
    ResNets take the data set's)."""
    spec = arch_spec(arch)
    out: dict[str, Any] = {}
    if spec.upsample is not None:
        out["upsample"] = spec.upsample
    if spec.lam_concat is not None:
        out["lam_concat"] = spec.lam_concat
    return out


# The CIFAR-100 transformer recipes (released swin_t_l3 / deit_s_l6 AdAutoMix configs): 224 px
# (RandomResizedCrop scale 0.8-1, bicubic, flip, RandAugment 2 ops m7 std 0.5; test: resize),
# AdamW wd 0.05 (none on norms, biases, position tables), per-step cosine to 1e-4 after a linear
# warm-up from 1e-5 x lr, batch 100, 200 epochs, N = 3, the generator of ARCH_SPECS (nearest
# upsampling with a lambda channel), EMA 0.999 -> 0.99996 after the first 25%, label smoothing
# 0.1 on both heads, the generator trained on 80% of the steps (switch_off 0.8: the released logs).
_TRANSFORMER_CIFAR = dict(
    dataset="cifar100", img_size=224, epochs=200, batch_size=100, mix_samples=3, beta=0.3, alpha=0.5,
    gen_norm=False, optimizer="adamw", weight_decay=0.05, min_lr=1e-4,
    gen_min_lr=1e-4, lr_per_step=True, warmup_ratio=1e-5, ema_start=0.999, ema_end=0.99996, ema_warmup=0.25,
    randaugment="rand-m7-n2-mstd0.5", train_crop="rrc", crop_scale=0.8, interpolation="bicubic",
    label_smoothing=0.1, gen_train_prob=0.8,
)

# Named presets: the published settings (docs/algorithm.md, Published settings). CIFAR presets
# train the paper's 800 epochs (the released config file says 400: pass --epochs 400 for it).
PRESETS: dict[str, dict[str, Any]] = {
    "digits-r18": dict(dataset="digits", arch="r18"),
    "cifar100-r18": dict(dataset="cifar100", arch="r18", epochs=800),
    "cifar100-rx50": dict(dataset="cifar100", arch="rx50", epochs=800),
    "tiny-r18": dict(dataset="tiny-imagenet", arch="r18", epochs=400),
    "imagenet-r18": dict(dataset="imagenet", arch="r18", epochs=100, gen_norm=False),
    "imagenet-r50": dict(dataset="imagenet", arch="r50", epochs=100, gen_norm=True),
    # ---- transformers and ConvNeXt on CIFAR-100 (released configs and logs; docs/archs.md)
    "cifar100-swin_t": dict(_TRANSFORMER_CIFAR, **arch_generator("swin_t"), arch="swin_t", lr=5e-4, gen_lr=1e-3, warmup_epochs=20,
                            clip_grad=10.0, lam_margin=0.03, drop_path=0.2),
    "cifar100-deit_s": dict(_TRANSFORMER_CIFAR, **arch_generator("deit_s"), arch="deit_s", lr=5e-4, gen_lr=1e-3, warmup_epochs=5,
                            clip_grad=10.0, lam_margin=0.03, drop_path=0.1),
    # The ConvNeXt_CIFAR run of the released log: 32 px with its 3x3 stride-1 stem, reflect-padded
    # crops; mix block lr 5e-4 (the log; the config file in the repository says 2e-3), no clipping,
    # lam_margin 0 (the config).
    "cifar100-convnext_t": dict(_TRANSFORMER_CIFAR, **arch_generator("convnext_t"), arch="convnext_t", img_size=32, cifar_stem=True, lr=2e-3,
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

# The paper's comparison runs: every baseline and AutoMix on each published setting, e.g.
# cifar100-r18-mixup (the same data, schedule and budget; the method's own published options).
for _base in ("cifar100-r18", "cifar100-rx50", "tiny-r18", "imagenet-r18", "imagenet-r50"):
    for _method in registry.BASELINES + ("automix",):
        _values = {k: v for k, v in PRESETS[_base].items() if k != "gen_norm"}
        PRESETS[f"{_base}-{_method}"] = dict(_values, method=_method)

# The released configuration each preset reproduces (github.com/JinXins/Adversarial-AutoMixup,
# configs/classification/...), for the README and `--help`.
PRESET_SOURCES: dict[str, str] = {
    "cifar100-r18": "cifar100/basic/r18_adautomix_bilinear.py",
    "cifar100-rx50": "cifar100/basic/rx50_adautomix.py",
    "tiny-r18": "tiny_imagenet/adautomix/basic/r18_adautomix_blinear.py",
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


def resolve(explicit: dict[str, Any], preset: Optional[str] = None) -> Config:
    """Build a Config from explicit settings (flags the user typed) and an optional preset.

    Order: dataclass defaults < dataset defaults < (dataset, arch) defaults < the architecture's
    published generator settings (``arch_generator``: nearest upsampling and the lambda channel
    for Swin, ConvNeXt and DeiT) < the method's defaults for the family < preset < explicit values.
    """
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    preset_values = dict(PRESETS[preset]) if preset else {}
    for key in ("dataset", "arch", "method"):   # read below, before the whole config is checked
        if key in explicit:
            checked_value(key, explicit[key])
    dataset = explicit.get("dataset", preset_values.get("dataset", Config.dataset))
    if dataset not in DATASETS:
        raise UsageError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    arch = explicit.get("arch", preset_values.get("arch", Config.arch))
    method = explicit.get("method", preset_values.get("method", Config.method))
    values: dict[str, Any] = {}
    values.update(DATASET_DEFAULTS[dataset])
    values.update(ARCH_DATASET_DEFAULTS.get((dataset, arch), {}))
    if arch in ARCH_SPECS or is_library_arch(arch):   # an unknown --arch is reported by validate()
        values.update(arch_generator(arch))
    values.update(registry.method_defaults(method, dataset, arch))
    # A preset describes one method's run (most: AdAutoMix's); with another --method its values
    # for options that method does not have are left out (an explicit flag is still checked).
    own = registry.method_options(method)
    values.update({k: v for k, v in preset_values.items() if k not in registry.OPTIONS or k in own})
    values.update(explicit)
    values["preset"] = preset
    cfg = Config.from_dict(values)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------- recipe validation
def validate_recipe(cfg: Config) -> None:
    """One-line UsageErrors for the architecture-recipe fields; called by validate()."""
    spec = arch_spec(cfg.arch)
    if cfg.optimizer not in registry.OPTIMIZERS:
        raise UsageError(f"--opt must be one of {', '.join(registry.OPTIMIZERS)} (got {cfg.optimizer!r})")
    for name in ("adam_beta1", "adam_beta2"):
        v = getattr(cfg, name)
        if not 0.0 <= v < 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1) (got {v})")
    if cfg.adam_eps <= 0:
        raise UsageError(f"--adam-eps must be positive (got {cfg.adam_eps})")
    if not 0.0 <= cfg.warmup_epochs <= cfg.epochs:
        raise UsageError(f"--warmup-epochs must be between 0 and --epochs {cfg.epochs} (got {cfg.warmup_epochs})")
    if not 0.0 < cfg.warmup_ratio <= 1.0:
        raise UsageError(f"--warmup-ratio must be in (0, 1] (got {cfg.warmup_ratio})")
    if cfg.clip_grad is not None and cfg.clip_grad <= 0:
        raise UsageError(f"--clip-grad must be a positive norm (got {cfg.clip_grad}); --clip-grad none for no clipping")
    if cfg.drop_path is not None:
        if not 0.0 <= cfg.drop_path < 1.0:
            raise UsageError(f"--drop-path must be in [0, 1) (got {cfg.drop_path})")
        if cfg.drop_path > 0 and spec.family == "resnet":
            raise UsageError(f"--drop-path applies to the Swin, ConvNeXt and DeiT architectures, not {cfg.arch}")
    if cfg.randaugment is not None:
        registry.parse_randaugment(cfg.randaugment)
    if cfg.train_crop is not None and cfg.train_crop not in TRAIN_CROPS:
        raise UsageError(f"--train-crop must be one of {', '.join(TRAIN_CROPS)} (got {cfg.train_crop!r})")
    if cfg.crop_scale is not None and not 0.0 < cfg.crop_scale <= 1.0:
        raise UsageError(f"--crop-scale must be in (0, 1] (got {cfg.crop_scale})")
    if cfg.interpolation is not None and cfg.interpolation not in INTERPOLATIONS:
        raise UsageError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)} (got {cfg.interpolation!r})")
    if cfg.cifar_stem and not spec.cifar_stem:
        raise UsageError(f"--arch {cfg.arch} has no CIFAR stem; use --no-cifar-stem and --img-size {spec.image_size}")
    check_image_size(cfg.arch, registry.image_side(cfg), cfg.cifar_stem)
