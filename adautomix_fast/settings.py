"""The engine's own settings, each declared once: type, default, range or choices, help, --help
section and whether it changes what is trained (``identity``).

``config.Config`` derives its fields from these declarations and the methods' options, the
training CLI its flags (``train.get_args_parser``), a YAML file its keys, and the range and
choice checks read them. Choices come from the tables that define them (architectures from the
model specs, optimizers from ``optim``, data sets from ``data``); per-data-set defaults are not
written here: ``--help`` prints them from the tables that apply them (``presets``). Help texts
state no default: the parser appends it.
"""

from __future__ import annotations

from . import registry
from .data import BACKENDS as DATA_BACKENDS, DATA_ENV, DATASETS
from .data.dada import AUGMENTS
from .data.transforms import INTERPOLATIONS, TRAIN_CROPS
from .methods.options import Option
from .models.specs import ARCH_NAMES
from .step.build import IMPLS
from .step.fused import STUDENT_PASSES, TEACHER_BN_STATS
from .step.optim import OPTIMIZERS
from .step.precision import AMP_DTYPES

# The --help sections, in their order (a method's options get a section of their own after "method").
RUN, DATA, MODEL, METHOD, OPTIMIZATION, RECIPE, PRECISION = (
    "run", "data", "model", "method", "optimization",
    "architecture recipes (AdamW, warm-up, clipping, drop path, augmentation, pretrained weights; the "
    "cifar100-swin_t/convnext_t/deit_s presets set them)",
    "precision and layout")
GROUPS = (RUN, DATA, MODEL, METHOD, OPTIMIZATION, RECIPE, PRECISION)


def _s(name, type_, default, help, group, identity=False, **kwargs) -> Option:
    return Option(name, type_, default, help=help, group=group, identity=identity, **kwargs)


SETTINGS: tuple[Option, ...] = (
    # --- data
    _s("dataset", str, "digits", "data set (digits is bundled)", DATA, identity=True, choices=DATASETS,
       cli_choices=False),
    _s("data_dir", str, None, "data set folder", DATA, optional=True, free_text=True, metavar="DIR",
       none_means=f"${DATA_ENV}/<dataset>"),
    _s("img_size", int, None, "training image size in pixels", DATA, identity=True, optional=True, low=8,
       none_means="the data set's native size, or the size of a folder's small images"),
    _s("workers", int, 2, "data loading processes", DATA, low=0, aliases=("-j",)),
    _s("data_backend", str, "auto", "data pipeline: auto takes DALI when it imports and the device is CUDA, "
       "else torch", DATA, choices=DATA_BACKENDS),
    _s("skip_corrupt", bool, False, "skip unreadable image files, counting them, instead of stopping", DATA),
    _s("train_subset", int, None, "train on a fixed class-balanced subset of N training images, the same for "
       "every --seed and --method; evaluation uses the whole split", DATA, identity=True, optional=True, low=2,
       metavar="N", range_help="a classifier needs two classes; leave it out to train on every image",
       none_means="every image"),
    # --- model
    _s("arch", str, "r18", "architecture: " + ", ".join(ARCH_NAMES) + ", timm/<timm model> or "
       "tv/<torchvision model> (docs/archs.md)", MODEL, identity=True, free_text=True),
    _s("tap", int, None, "timm/ and tv/ archs: the stage whose output the generator reads", MODEL, identity=True,
       optional=True, low=0, metavar="STAGE", none_means="the stage at stride 16"),
    _s("cifar_stem", bool, None, "3x3 stride-1 stem without max-pool", MODEL, identity=True, optional=True,
       none_means="automatic: on for images of 64 px or less"),
    # --- method (the methods' own options follow, one section per method)
    _s("method", str, "adautomix", "training method (docs/methods.md)", METHOD, identity=True,
       choices=tuple(registry.METHODS), cli_choices=False),
    _s("mix_alpha", float, None, "lambda's Beta(a, a) concentration", METHOD, identity=True, optional=True,
       low=0, open_low=True, range_help="it is lambda's Beta(a, a) concentration",
       none_means="the method's published value for the data set's family"),
    _s("label_smoothing", float, 0.0, "label smoothing of every cross-entropy", METHOD, identity=True,
       low=0, high=1, open_high=True),
    # --- optimisation
    _s("epochs", int, 3, "epochs", OPTIMIZATION, identity=True, low=1),
    _s("batch_size", int, 100, "images per step", OPTIMIZATION, identity=True, low=2, aliases=("-b",),
       range_help="train-mode BatchNorm and mixing need several images per batch"),
    _s("eval_batch_size", int, None, "images per evaluation batch", OPTIMIZATION, optional=True, low=1,
       none_means="--batch-size"),
    _s("optimizer", str, "sgd", "optimizer: sgd (momentum --momentum) or adamw", RECIPE, identity=True,
       choices=OPTIMIZERS, flag_name="--opt"),
    _s("lr", float, 0.1, "peak learning rate", OPTIMIZATION, identity=True, low=0, open_low=True),
    _s("min_lr", float, 0.0, "final learning rate of the cosine schedule", OPTIMIZATION, identity=True, low=0),
    _s("momentum", float, 0.9, "SGD momentum", OPTIMIZATION, identity=True, low=0, high=1, open_high=True),
    _s("weight_decay", float, 1e-4, "weight decay", OPTIMIZATION, identity=True, low=0, aliases=("--wd",)),
    _s("adam_beta1", float, 0.9, "AdamW beta1", RECIPE, identity=True, low=0, high=1, open_high=True),
    _s("adam_beta2", float, 0.999, "AdamW beta2", RECIPE, identity=True, low=0, high=1, open_high=True),
    _s("adam_eps", float, 1e-8, "AdamW epsilon", RECIPE, identity=True, low=0, open_low=True),
    _s("wd_exclude", bool, None, "no weight decay on norms, biases, position tables and layer scales", RECIPE,
       identity=True, optional=True, none_means="on with adamw, off with sgd, as released"),
    _s("gen_lr", float, None, "generator's own learning rate", OPTIMIZATION, identity=True, optional=True,
       low=0, open_low=True, none_means="the student's"),
    _s("gen_min_lr", float, None, "generator's final learning rate (needs --gen-lr)", OPTIMIZATION,
       identity=True, optional=True, low=0, none_means="--min-lr"),
    _s("lr_per_step", bool, False, "anneal every step instead of every epoch (released configs anneal per "
       "epoch)", OPTIMIZATION, identity=True),
    _s("warmup_epochs", float, 0.0, "linear learning-rate warm-up over this many epochs, then the cosine", RECIPE,
       identity=True, low=0),
    _s("warmup_ratio", float, 1e-5, "the warm-up starts at this fraction of the scheduled lr (mmcv's ratio)",
       RECIPE, identity=True, low=0, high=1, open_low=True),
    _s("clip_grad", float, None, "clip the total L2 norm of the gradients to NORM; 'none' for no clipping", RECIPE,
       identity=True, optional=True, low=0, open_low=True, none_word=True, metavar="NORM",
       none_means="no clipping", words="a positive norm", range_help="--clip-grad none for no clipping"),
    _s("ema_start", float, 0.999, "teacher EMA momentum at the start", OPTIMIZATION, identity=True, low=0, high=1),
    _s("ema_end", float, 0.999999, "teacher EMA momentum at the end", OPTIMIZATION, identity=True, low=0, high=1),
    _s("ema_warmup", float, 0.1, "fraction of training at constant --ema-start", OPTIMIZATION, identity=True,
       low=0, high=1),
    _s("drop_path", float, None, "stochastic depth rate of Swin, ConvNeXt and DeiT trunks", RECIPE, metavar="RATE",
       identity=True, optional=True, low=0, high=1, open_high=True, none_means="the architecture's published "
       "rate"),
    _s("randaugment", str, None, "RandAugment in timm notation, e.g. rand-m7-n2-mstd0.5; 'none' for none",
       RECIPE, identity=True, optional=True, free_text=True, none_word=True, metavar="SPEC",
       aliases=("--aa",)),
    _s("augment", str, None, "a searched augmentation policy after crop and flip, with Cutout (half the side) after "
       "normalisation: dada (DADA's policy for the data set) or dada-<cifar10|cifar100|svhn|imagenet>; 'none' for "
       "none", RECIPE, identity=True, optional=True, choices=AUGMENTS, none_word=True, none_means="none"),
    _s("train_crop", str, None, "training crop: pad (random crop after zero padding), pad-reflect, rrc "
       "(RandomResizedCrop)", RECIPE, identity=True, optional=True, choices=TRAIN_CROPS,
       none_means="the data set's"),
    _s("crop_scale", float, None, "RandomResizedCrop's minimum area", RECIPE, identity=True, optional=True,
       low=0, high=1, open_low=True, none_means="the data set's"),
    _s("interpolation", str, None, "resizing interpolation", RECIPE, identity=True, optional=True,
       choices=INTERPOLATIONS, none_means="the data set's"),
    # Not identity: a resumed run already holds the weights, wherever they came from.
    _s("pretrained", str, None, "initial weights of the student (the teacher copies them; the generator starts "
       "fresh): a state dict file (torchvision/timm .pth or .safetensors, an --export of this engine, one of its "
       "checkpoints), 'imagenet' (the architecture's library weights, from the local cache only) or a "
       "torchvision weight name; 'none' for none", RECIPE, optional=True, free_text=True, none_word=True,
       metavar="WEIGHTS"),
    # --- precision, layout and step implementation
    _s("amp", bool, None, "mixed precision autocast (the choice and its reason are printed and logged)",
       PRECISION, optional=True, none_means="bf16 where the GPU or CPU computes bf16 natively, fp32 elsewhere"),
    _s("amp_dtype", str, "bf16", "autocast dtype; fp16 adds a GradScaler", PRECISION, choices=AMP_DTYPES),
    _s("channels_last", bool, None, "channels-last memory format", PRECISION, optional=True,
       none_means="on with CUDA, off on CPU"),
    _s("impl", str, "auto", "step implementation: fused (one compiled, CUDA-graph step) or reference (eager); "
       "auto: fused on CUDA, reference on CPU", RUN, choices=IMPLS),
    _s("student_passes", str, "batched", "fused impl: student passes as one [3B] batch with segmented "
       "BatchNorm, or separate", RUN, choices=STUDENT_PASSES),
    _s("teacher_bn_stats", str, "exact", "fused impl: replay the reference's teacher BN running-stat updates "
       "(exact) or keep one per real pass (single)", RUN, choices=TEACHER_BN_STATS),
    _s("compile_mode", str, None, "fused impl: torch.compile mode", RUN, optional=True, free_text=True,
       none_means="reduce-overhead on CUDA, default on CPU"),
    _s("compile_backend", str, "inductor", "fused impl: torch.compile backend; aot_eager traces the one-graph "
       "step without generating code, to check a setup quickly", RUN, free_text=True),
    _s("device", str, "auto", "auto (the GPU when present), cpu, cuda or cuda:N", RUN, free_text=True),
    # --- run
    _s("seed", int, 0, "random seed of model init, data order and mixing", RUN, identity=True, low=0,
       high=2 ** 63, open_high=True, words="a non-negative whole number below 2**63"),
    _s("output", str, "runs", "folder for run folders", RUN, free_text=True, metavar="DIR"),
    _s("run_name", str, None, "run folder name", RUN, optional=True, free_text=True,
       none_means="<dataset>-<arch>-<date-time>-s<seed>-<random>"),
    _s("log_interval", int, 20, "steps between training log records", RUN, low=1),
    _s("save_every_steps", int, 0, "also write checkpoint-last.pt every N steps, mid-epoch; a resumed or "
       "restarted run continues from that batch (0: at epoch ends only)", RUN, low=0, metavar="N"),
    _s("vis_every", int, None, "save a picture of the method's mixed samples (and the training curves) every N "
       "epochs (0: never)", RUN, optional=True, low=0, metavar="EPOCHS",
       none_means="about 10 per run and the last epoch"),
    _s("tensorboard", bool, False, "also write every logged scalar to <run folder>/tensorboard", RUN),
    _s("sync_bn", bool, False, "SyncBatchNorm across torchrun processes (reference impl on CUDA)", RUN),
    _s("preset", str, None, "published setting to start from", RUN, optional=True, free_text=True,
       none_means="none", metavar="NAME"),   # choices: presets.PRESETS, which the parser lists
    _s("notes", str, "", "free text kept with the run", RUN, free_text=True),
)

__all__ = ["GROUPS", "SETTINGS"]
