"""What every suite reads: the checkpoint's model and chosen head, the test images, the options.

``load_run(path)`` resolves a run folder or a checkpoint file and rebuilds the model in eval
mode; ``EvalContext`` adds the test loader and the options. A suite iterates
``ctx.batches(desc)`` (normalised images [B,3,H,W] on the device, int64 labels [B], and the index
of the batch's first image, so that per-image randomness does not depend on the batch size) and
scores ``ctx.classifier`` (the chosen head as a plain ``images -> logits`` module).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from ..config import Config
from ..data import build_loaders
from ..errors import UsageError
from ..registry import build_model
from ..run import checkpoint as ckpt_lib
from ..runtime.devices import pick_device
from ..step.precision import resolve_precision

# The suites, in the order they run and appear in the report. `all` runs every one of them.
SUITES = ("accuracy", "calibration", "fgsm", "pgd", "corruption", "occlusion", "cam")
PROTOCOLS = ("correct", "official")


@dataclass
class EvalOptions:
    """Every knob of an evaluation (the CLI's flags); defaults are the paper's protocols."""

    suites: tuple[str, ...] = SUITES
    head: Optional[str] = None              # None: the model's HEADLINE (teacher_one for AdAutoMix)
    protocol: str = "correct"               # or "official": the released tools' ECE and FGSM
    checkpoint: str = "last"                # which checkpoint of a run folder: last or best
    data_dir: Optional[str] = None          # None: the run's own data_dir (or $ADAUTOMIX_DATA)
    limit: Optional[int] = None             # the first N test images only
    batch_size: int = 100
    workers: int = 2
    device: str = "auto"
    amp: Optional[bool] = None              # bf16 autocast for forward-only suites; None: training's rule
    seed: int = 0                           # PGD start, occlusion patches, synthesised corruptions
    eps: float = 8.0                        # attack budget, in 1/255 pixel units (l-infinity)
    pgd_steps: int = 10
    pgd_alpha: float = 2.0                  # PGD step, in 1/255 units
    corruption_dir: Optional[str] = None    # CIFAR-C (.npy) or ImageNet-C folders; None: synthesise
    corruptions: Optional[tuple[str, ...]] = None   # None: all 19
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    occlusion_patch: Optional[int] = None   # None: the divisor of the image size closest to size/14
    cam_images: int = 6
    progress: bool = True


@dataclass
class LoadedRun:
    """A checkpoint and the model rebuilt from it (eval mode, on the CPU)."""

    checkpoint_path: str
    run_dir: str
    ckpt: dict
    config: dict
    model: nn.Module
    num_classes: int
    cifar_stem: bool

    @property
    def method(self) -> str:
        # The method field arrives with the baselines; older checkpoints are AdAutoMix runs.
        return str(self.config.get("method", "adautomix"))

    @property
    def epoch(self) -> Optional[int]:
        return self.ckpt.get("epoch")


def resolve_checkpoint(path: str, which: str = "last") -> str:
    """A run folder -> its checkpoint-<which>.pt; a file -> itself (one-line errors otherwise)."""
    if which not in ("last", "best"):
        raise UsageError(f"--checkpoint must be last or best (got {which!r})")
    if os.path.isdir(path):
        candidate = os.path.join(path, f"checkpoint-{which}.pt")
        if not os.path.isfile(candidate):
            other = "best" if which == "last" else "last"
            if os.path.isfile(os.path.join(path, f"checkpoint-{other}.pt")):
                raise UsageError(f"{path} has no checkpoint-{which}.pt but has checkpoint-{other}.pt: pass "
                                 f"--checkpoint {other}")
            raise UsageError(f"{path} has no checkpoint-{which}.pt; pass a run folder of "
                             "python -m adautomix_fast.train or a checkpoint file")
        return candidate
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such run folder or checkpoint file")
    return path


def load_run(path: str, which: str = "last") -> LoadedRun:
    """Load a checkpoint (file or run folder) and rebuild its model in eval mode."""
    file = resolve_checkpoint(path, which)
    try:
        ckpt = ckpt_lib.load(file)
    except UsageError as e:
        # checkpoint.load words its errors for `train --resume`.
        raise UsageError(str(e).replace("--resume ", "", 1)) from None
    config = dict(ckpt["config"])
    cfg = Config.from_dict(config)
    num_classes, cifar_stem = int(ckpt["num_classes"]), bool(ckpt["cifar_stem"])
    # the side the run's data was read at (older checkpoints: the configured one)
    model = build_model(cfg, num_classes, cifar_stem, ckpt.get("image_size"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"{file}: its weights do not fit the model its config describes ({first})") from None
    model.eval()
    return LoadedRun(os.path.abspath(file), os.path.dirname(os.path.abspath(file)), ckpt, config, model,
                     num_classes, cifar_stem)


def check_head(model: nn.Module, head: Optional[str]) -> str:
    """The head to evaluate: ``head`` if the model has it (one-line error if not), else its HEADLINE."""
    heads = tuple(model.HEADS)
    if head is None:
        return model.HEADLINE
    if head not in heads:
        raise UsageError(f"--head {head}: this checkpoint's model has no such head; choose one of {', '.join(heads)}")
    return head


class HeadClassifier(nn.Module):
    """One evaluation head as a plain classifier: normalised images [B,3,H,W] -> logits [B,C].

    ``target_layer`` is the module Grad-CAM hooks (the network's ``cam_target()``).
    """

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        network, attr = model.head_network(head)
        self.network = network
        self.head_attr = attr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.network, self.head_attr)(self.network.pooled(x))

    @property
    def target_layer(self) -> nn.Module:
        return self.network.cam_target()


class EvalContext:
    """The loaded run, its chosen head, the test images and the options, on one device."""

    def __init__(self, run: LoadedRun, options: EvalOptions):
        self.run, self.options = run, options
        self.device = pick_device(options.device)
        self.model = run.model.to(self.device).eval()
        self.head = check_head(self.model, options.head)
        self.classifier = HeadClassifier(self.model, self.head).eval()
        if options.limit is not None and options.limit < 1:
            raise UsageError(f"--limit must be at least 1 (got {options.limit})")
        if options.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {options.batch_size})")
        cfg = Config.from_dict(run.config)
        data_dir = options.data_dir if options.data_dir is not None else cfg.data_dir
        # Only the test split is used; batch_size 1 for the (unused) training loader so that no
        # data set is too small for it.
        _, self.loader, self.info = build_loaders(
            cfg.dataset, data_dir, 1, eval_batch_size=options.batch_size, workers=options.workers,
            seed=cfg.seed, image_size=cfg.img_size, backend="torch", device=torch.device("cpu"),
            pin_memory=self.device.type == "cuda")
        if self.info.num_classes != run.num_classes:
            raise UsageError(f"the checkpoint has {run.num_classes} classes but the data set "
                             f"({cfg.dataset}) has {self.info.num_classes}; "
                             "pass --data-dir with the data it was trained on")
        self.dataset, self.data_dir = cfg.dataset, data_dir
        self.num_images = self.info.val_size if options.limit is None else min(options.limit, self.info.val_size)
        self.mean = torch.tensor(self.info.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.info.std, device=self.device).view(1, 3, 1, 1)
        # The training's rule (precision.py), so that a run's evaluated top-1 is the one its log
        # reports: bf16 where the GPU or CPU computes it natively, fp32 elsewhere (bf16 on a CPU
        # that emulates it would make the suite many times slower).
        choice = resolve_precision(options.amp, "bf16", self.device)
        if choice.warning:
            print(choice.warning, file=sys.stderr, flush=True)
        self.amp_dtype, self.precision, self.precision_reason = choice.dtype, choice.label, choice.reason
        self.amp = choice.amp

    # ------------------------------------------------------------------ images
    def batches(self, desc: str) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(index of the first image, normalised images [B,3,H,W], labels [B]) over the first
        ``num_images`` test images, in order, with a progress bar."""
        seen = 0
        total = -(-self.num_images // self.options.batch_size)
        bar = tqdm(self.loader, desc=desc, total=total, leave=False, dynamic_ncols=True,
                   disable=not self.options.progress)
        for x, y in bar:
            if seen >= self.num_images:
                break
            take = min(len(y), self.num_images - seen)
            yield seen, x[:take].to(self.device, non_blocking=True), y[:take].to(self.device, non_blocking=True)
            seen += take
        bar.close()

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> the network's input (the data set's mean/std)."""
        return (x01 - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input -> pixels in [0, 1] (up to rounding)."""
        return x * self.std + self.mean

    def autocast(self):
        """Autocast for forward-only passes when the precision rule (or --amp) enables it."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen head's fp32 logits [B,C] on normalised images."""
        with self.autocast():
            return self.classifier(x).float()

    def describe(self) -> dict:
        """Where the numbers come from, for results.json."""
        return {"dataset": self.dataset, "data_dir": self.data_dir, "split": "val", "images": self.num_images,
                "image_size": self.info.image_size, "num_classes": self.info.num_classes,
                "mean": list(self.info.mean), "std": list(self.info.std)}
