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
from dataclasses import dataclass, fields
from typing import Any, Optional

from .errors import UsageError
from .models.specs import ARCH_SPECS, check_image_size

ARCHS = ("r18", "r34", "r50", "rx50", "tiny",
         # transformers and ConvNeXt (models.ARCH_SPECS, docs/archs.md), and their test variants
         "swin_t", "convnext_t", "deit_s", "tiny_swin", "tiny_convnext", "tiny_deit")
DATASETS = ("digits", "cifar10", "cifar100", "tiny-imagenet", "imagenet", "folder",
            "cub200", "aircraft", "cars")
IMPLS = ("auto", "reference", "fused")
AMP_DTYPES = ("bf16", "fp16")
DATA_BACKENDS = ("auto", "torch", "dali")
GEN_KERNELS = ("auto", "torch", "triton")
# The paper's baselines (one head, no generator); with "adautomix" and "automix" the --method values.
BASELINES = ("vanilla", "mixup", "cutmix", "manifoldmix", "fmix", "resizemix", "saliencymix", "puzzlemix")


# The recipe fields that define what is trained (appended to Config.IDENTITY; `pretrained` is
# left out: a resumed run already holds the weights, wherever they came from).
RECIPE_IDENTITY = ("optimizer", "adam_beta1", "adam_beta2", "adam_eps", "wd_exclude", "warmup_epochs",
                   "warmup_ratio", "clip_grad", "drop_path", "randaugment", "train_crop", "crop_scale",
                   "interpolation")


@dataclass
class Config:
    # --- data
    dataset: str = "digits"
    data_dir: Optional[str] = None
    img_size: Optional[int] = None          # None: the data set's native training size
    workers: int = 2
    data_backend: str = "auto"              # auto: dali when DALI imports and the device is CUDA, else torch
    skip_corrupt: bool = False              # skip (and count) unreadable image files instead of stopping
    # --- model
    arch: str = "r18"
    cifar_stem: Optional[bool] = None       # None: automatic (images of 64 px or less)
    # --- generator (docs/algorithm.md, Generator)
    mix_samples: int = 3
    lam_concat: bool = False
    gen_norm: bool = False
    upsample: str = "bilinear"
    gen_kernels: str = "auto"               # auto: Triton kernels with the fused impl on CUDA, else PyTorch
    # --- losses (docs/algorithm.md, Losses)
    beta: float = 0.3
    alpha: float = 0.5
    lam_margin: float = 0.03
    # --- method (docs/methods.md): AdAutoMix or a baseline, and its options
    method: str = "adautomix"
    mix_alpha: Optional[float] = None       # lambda's Beta(a, a); None: the method's published default
    label_smoothing: float = 0.0
    # AdAutoMix ablation switches (paper Tables 5, 8, 9, 10): a switched-off term is computed and
    # logged but left out of the loss
    loss_one: bool = True                   # clean CE in L_re (weight 1 - alpha)
    loss_mce: bool = True                   # pixel-mixup MCE in L_re (weight alpha, N >= 3)
    loss_amce: bool = True                  # the student's generated-mix MCE
    loss_k: bool = True                     # the teacher's generated-mix CE in the generator objective
    loss_cos: bool = True                   # the cosine term of the adversarial objective
    gen_objective: str = "alternate"        # alternate (released), adversarial or cooperative
    random_mix_samples: bool = False        # N drawn from 2..mix_samples every step (released is_random)
    gen_train_prob: float = 1.0             # fraction of steps with a generator objective (released switch_off)
    # AutoMix's L1 mask loss (weight, margin, schedule: cosine to 0 per step, or constant)
    mask_loss: float = 0.0
    mask_loss_margin: float = 0.1
    mask_loss_schedule: str = "cosine"
    # PuzzleMix (OpenMixup's options; methods/puzzlemix.py): grids 2 .. 2^(n-1) blocks a side, the
    # graph cut's label smoothness beta, data smoothness gamma and prior weight eta, the transport
    # (approx: the released iterative assignment; exact; off), its cost eps and cell side (px, -1:
    # the graph-cut blocks). None: the published value for the image size (<= 32 px: 5 and 4 px).
    puzzle_block_num: Optional[int] = None
    puzzle_beta: float = 1.2
    puzzle_gamma: float = 0.5
    puzzle_eta: float = 0.2
    puzzle_transport: str = "approx"
    puzzle_t_eps: float = 0.8
    puzzle_t_size: Optional[int] = None
    # --- optimisation
    epochs: int = 3
    batch_size: int = 100
    eval_batch_size: Optional[int] = None   # None: same as batch_size
    lr: float = 0.1
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gen_lr: Optional[float] = None          # None: G shares the student's lr and schedule
    gen_min_lr: Optional[float] = None
    lr_per_step: bool = False               # released configs anneal per epoch
    # --- EMA teacher (docs/algorithm.md, EMA teacher)
    ema_start: float = 0.999
    ema_end: float = 0.999999
    ema_warmup: float = 0.1                 # fraction of training at constant ema_start
    # --- precision and layout
    amp: Optional[bool] = None              # None: bf16 where the device computes it natively (CUDA, CPUs with bf16 instructions), else fp32
    amp_dtype: str = "bf16"
    channels_last: Optional[bool] = None    # None: on with CUDA, off on CPU
    impl: str = "auto"                      # auto: fused on CUDA, reference on CPU
    student_passes: str = "batched"         # fused impl: one [3B] pass with segmented BN, or "separate"
    teacher_bn_stats: str = "exact"         # fused impl: replay the reference's BN updates, or "single"
    compile_mode: Optional[str] = None      # fused impl: torch.compile mode (None: reduce-overhead on CUDA)
    compile_backend: str = "inductor"       # fused impl: torch.compile backend (aot_eager: trace only, no codegen)
    device: str = "auto"
    # --- run
    seed: int = 0
    output: str = "runs"
    run_name: Optional[str] = None
    log_interval: int = 20
    save_every_steps: int = 0               # also checkpoint every N steps (0: at epoch ends only)
    vis_every: Optional[int] = None         # mixed-sample pictures every N epochs (None: ~10 per run, 0: never)
    tensorboard: bool = False               # mirror every log record into <run>/tensorboard
    sync_bn: bool = False                   # SyncBatchNorm across ranks (reference impl, CUDA)
    preset: Optional[str] = None
    notes: str = ""
    # --- architecture recipes (docs/archs.md, Recipes)
    optimizer: str = "sgd"                  # sgd | adamw (adamw: the transformer/ConvNeXt recipes)
    adam_beta1: float = 0.9                 # AdamW betas and eps (the released 0.9, 0.999, 1e-8)
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    wd_exclude: Optional[bool] = None       # no weight decay on norms, biases, position tables (None: on with adamw)
    warmup_epochs: float = 0.0              # linear warm-up (0: none), then the cosine
    warmup_ratio: float = 1e-5              # warm-up starts at this fraction of the scheduled lr (mmcv's ratio)
    clip_grad: Optional[float] = None       # clip the gradients' total L2 norm to this (None: no clipping)
    drop_path: Optional[float] = None       # stochastic depth rate (None: the architecture's published rate)
    randaugment: Optional[str] = None       # e.g. "rand-m7-n2-mstd0.5" (None: no RandAugment)
    train_crop: Optional[str] = None        # pad | pad-reflect | rrc (None: the data set's published crop)
    crop_scale: Optional[float] = None      # RandomResizedCrop's minimum area (None: the data set's)
    interpolation: Optional[str] = None     # bilinear | bicubic for resizing (None: the data set's)
    pretrained: Optional[str] = None        # weights file or name ("imagenet") for the student and teacher

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

    # The fields that define *what* is trained. A checkpoint may be resumed with a different
    # output folder, worker count or log interval, but not with another model or algorithm.
    IDENTITY = (
        "dataset", "img_size", "arch", "cifar_stem", "mix_samples", "lam_concat", "gen_norm",
        "upsample", "beta", "alpha", "lam_margin", "epochs", "batch_size", "lr", "min_lr",
        "momentum", "weight_decay", "gen_lr", "gen_min_lr", "lr_per_step", "ema_start",
        "ema_end", "ema_warmup", "seed", "method", "mix_alpha", "label_smoothing", "loss_one",
        "loss_mce", "loss_amce", "loss_k", "loss_cos", "gen_objective", "random_mix_samples",
        "gen_train_prob", "mask_loss", "mask_loss_margin", "mask_loss_schedule",
        "puzzle_block_num", "puzzle_beta", "puzzle_gamma", "puzzle_eta", "puzzle_transport", "puzzle_t_eps",
        "puzzle_t_size",
    ) + RECIPE_IDENTITY

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in self.IDENTITY}

    def fingerprint(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> None:
        """Raise a one-line UsageError for impossible values or combinations."""
        if self.arch not in ARCHS:
            raise UsageError(f"unknown --arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown --dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
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
        if self.upsample not in ("bilinear", "nearest"):
            raise UsageError(f"--upsample must be bilinear or nearest (got {self.upsample!r})")
        if self.amp_dtype not in AMP_DTYPES:
            raise UsageError(f"--amp-dtype must be one of {AMP_DTYPES} (got {self.amp_dtype!r})")
        if self.data_backend not in DATA_BACKENDS:
            raise UsageError(f"--data-backend must be one of {', '.join(DATA_BACKENDS)} (got {self.data_backend!r})")
        if self.gen_kernels not in GEN_KERNELS:
            raise UsageError(f"--gen-kernels must be one of {', '.join(GEN_KERNELS)} (got {self.gen_kernels!r})")
        if self.impl not in IMPLS:
            raise UsageError(f"--impl {self.impl!r} is not available; choose one of {', '.join(IMPLS)}")
        if self.student_passes not in ("batched", "separate"):
            raise UsageError(f"--student-passes must be batched or separate (got {self.student_passes!r})")
        if self.teacher_bn_stats not in ("exact", "single"):
            raise UsageError(f"--teacher-bn-stats must be exact or single (got {self.teacher_bn_stats!r})")
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
        from .methods import METHODS
        if self.method not in METHODS:
            raise UsageError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.mix_alpha is not None and self.mix_alpha <= 0:
            raise UsageError(f"--mix-alpha must be > 0 (got {self.mix_alpha}): it is lambda's Beta(a, a) concentration")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.gen_objective not in ("alternate", "adversarial", "cooperative"):
            raise UsageError(f"--gen-objective must be alternate, adversarial or cooperative (got {self.gen_objective!r})")
        if not 0.0 < self.gen_train_prob <= 1.0:
            raise UsageError(f"--gen-train-prob must be in (0, 1] (got {self.gen_train_prob})")
        if self.mask_loss < 0 or self.mask_loss_margin < 0:
            raise UsageError(f"--mask-loss and --mask-loss-margin must be >= 0 (got {self.mask_loss}, {self.mask_loss_margin})")
        if self.mask_loss_schedule not in ("cosine", "constant"):
            raise UsageError(f"--mask-loss-schedule must be cosine or constant (got {self.mask_loss_schedule!r})")
        from .methods.puzzlemix import validate_settings
        validate_settings(self)
        if self.method == "automix" and self.mix_samples != 2:
            raise UsageError(f"AutoMix mixes two images (got --mix-samples {self.mix_samples}); drop --mix-samples")
        if self.random_mix_samples and self.mix_samples < 3:
            raise UsageError("--random-mix-samples draws N from 2..--mix-samples: set --mix-samples 3 or more")
        if self.method not in ("adautomix", "automix"):
            generator_only = [f for f in ("random_mix_samples",) if getattr(self, f)]
            if generator_only:
                raise UsageError(f"--{generator_only[0].replace('_', '-')} applies to adautomix only "
                                 f"(--method {self.method} has no generator)")


def _field_types() -> dict[str, Any]:
    import typing
    return typing.get_type_hints(Config)


def _setting(key: str) -> str:
    return f"--{key.replace('_', '-')} (config key {key})"


def checked_value(key: str, value: Any) -> Any:
    """``value`` as the type declared for ``key`` (an int is a valid float), or a UsageError:
    bools are not numbers, floats must be finite, whole-number fields take no fraction."""
    import math
    import typing
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
    spec = ARCH_SPECS[arch]
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
    for _method in BASELINES + ("automix",):
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


# ---------------------------------------------------------------------------- methods
# lambda's Beta(a, a) concentration per method and data-set family: the published configs
# (docs/methods.md). ImageNet ResNet-18/34 use 0.2 for the cutting methods.
METHOD_ALPHA: dict[str, dict[str, float]] = {
    "cifar": dict(mixup=1.0, cutmix=0.2, manifoldmix=2.0, saliencymix=0.2, fmix=0.2, resizemix=1.0, automix=2.0,
                  puzzlemix=1.0),
    "cifar-transformer": dict(mixup=0.8, cutmix=2.0, manifoldmix=2.0, saliencymix=0.2, fmix=1.0, resizemix=1.0,
                              automix=2.0, puzzlemix=2.0),
    "imagenet": dict(mixup=0.2, cutmix=1.0, manifoldmix=0.2, saliencymix=1.0, fmix=1.0, resizemix=1.0, automix=2.0,
                     puzzlemix=1.0),
    "fine-grained": dict(mixup=1.0, cutmix=0.2, manifoldmix=2.0, saliencymix=0.2, fmix=0.2, resizemix=1.0,
                         automix=2.0, puzzlemix=1.0),
}
_SMALL_IMAGENET_TRUNKS = ("r18", "r34")
TRANSFORMER_ARCHS = ("swin_t", "convnext_t", "deit_s")
FINE_GRAINED = ("cub200", "aircraft", "cars")


def data_family(dataset: str, arch: str) -> str:
    """The family whose published method settings apply: cifar (small images: digits, CIFAR,
    Tiny-ImageNet), cifar-transformer, imagenet (ImageNet and image folders) or fine-grained."""
    if dataset in FINE_GRAINED:
        return "fine-grained"
    if dataset in ("imagenet", "folder"):
        return "imagenet"
    return "cifar-transformer" if arch in TRANSFORMER_ARCHS else "cifar"


def method_defaults(method: str, dataset: str, arch: str) -> dict[str, Any]:
    """The published settings of ``method`` for the data set's family (docs/methods.md; for AutoMix
    the released OpenMixup configs), applied after the data set's defaults and before a preset."""
    family = data_family(dataset, arch)
    out: dict[str, Any] = {}
    alphas = METHOD_ALPHA[family]
    if method in alphas:
        alpha = alphas[method]
        if family == "imagenet" and arch in _SMALL_IMAGENET_TRUNKS and method in ("cutmix", "saliencymix", "fmix"):
            alpha = 0.2
        out["mix_alpha"] = alpha
    if method in BASELINES and family in ("cifar", "cifar-transformer"):
        out["min_lr"] = 0.0              # the CIFAR baselines anneal the lr by cosine to 0
    if method == "automix":
        # OpenMixup AutoMix: N = 2, Beta(2, 2), margin 0.08, nearest upsampling, cooperative
        # generator without a cosine term, L1 mask loss 0.1 (margin 0.1): constant in the
        # released CIFAR config, annealed in the ImageNet one.
        out.update(mix_samples=2, lam_margin=0.08, upsample="nearest", gen_norm=False, gen_objective="cooperative",
                   loss_cos=False, mask_loss=0.1, mask_loss_margin=0.1,
                   mask_loss_schedule="constant" if family == "cifar" else "cosine")
    if method == "adautomix":
        out["mix_alpha"] = 1.0
    return out


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
    if arch in ARCH_SPECS:   # an unknown --arch is reported by validate()
        values.update(arch_generator(arch))
    values.update(method_defaults(method, dataset, arch))
    values.update(preset_values)
    values.update(explicit)
    values["preset"] = preset
    cfg = Config.from_dict(values)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------- recipe validation
TRAIN_CROPS = ("pad", "pad-reflect", "rrc")
INTERPOLATIONS = ("bilinear", "bicubic")


def validate_recipe(cfg: Config) -> None:
    """One-line UsageErrors for the architecture-recipe fields; called by validate()."""
    from .data.randaugment import parse_randaugment
    from .data.transforms import NATIVE_SIZE
    from .optim import OPTIMIZERS

    spec = ARCH_SPECS[cfg.arch]
    if cfg.optimizer not in OPTIMIZERS:
        raise UsageError(f"--opt must be one of {', '.join(OPTIMIZERS)} (got {cfg.optimizer!r})")
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
        parse_randaugment(cfg.randaugment)
    if cfg.train_crop is not None and cfg.train_crop not in TRAIN_CROPS:
        raise UsageError(f"--train-crop must be one of {', '.join(TRAIN_CROPS)} (got {cfg.train_crop!r})")
    if cfg.crop_scale is not None and not 0.0 < cfg.crop_scale <= 1.0:
        raise UsageError(f"--crop-scale must be in (0, 1] (got {cfg.crop_scale})")
    if cfg.interpolation is not None and cfg.interpolation not in INTERPOLATIONS:
        raise UsageError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)} (got {cfg.interpolation!r})")
    if cfg.cifar_stem and not spec.cifar_stem:
        raise UsageError(f"--arch {cfg.arch} has no CIFAR stem; use --no-cifar-stem and --img-size {spec.image_size}")
    check_image_size(cfg.arch, cfg.img_size or NATIVE_SIZE[cfg.dataset], cfg.cifar_stem)
