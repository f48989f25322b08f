"""The expected GPU-hours of a comparison's runs (``compare --dry-run``): a planning figure for
``--slurm-time`` and a cluster budget, not a benchmark.

A run's time is its steps times the seconds of one step. The steps are exact (epochs x the
training images over the batch size; the data set's published training-set size, or
``--subset``). The seconds per step come, in this order, from:

1. **measured**: a run of the same method in this comparison folder that has trained at least an
   epoch (its logged training time over its steps), so that the estimate becomes a measurement
   as soon as the first epochs are in;
2. **scaled from the released logs**: the released AdAutoMix log of CIFAR-100, ResNet-18, 200
   epochs (``experiments/CIFAR100/Mixups_r18_200epoch_json/AdAutoMix.json``, an RTX 4090: 0.0740 s
   per step of batch 100, N = 3, the mean of its 2,000 logged iterations), brought to plain
   training by the paper's Table 10 (N = 3 costs 0.2418 / 0.1584 of plain training's step), times
   the ratio of the run's forward FLOPs per step to that setting's (the network at its image size,
   counted by ``torch.utils.flop_counter`` on the meta device: no memory, no data), times the
   method's step cost relative to plain training (``method_step_cost``). Expect it to be off by up
   to a factor of two or three: GPUs differ, and FLOPs do not capture memory-bound work or the
   data pipeline. (The paper's own Table 10 timings are about twice the released log's.)
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..methods.meada import MEADA, phase_epochs
from ..models import build_classifier
from ..run.records import read_jsonl

# The named data sets: published training-set size (digits: the engine's fixed split), classes,
# and the image side a run trains at when --img-size is left automatic.
DATASETS = {"digits": (1437, 10, 16), "cifar10": (50_000, 10, 32), "cifar100": (50_000, 100, 32),
            "tiny-imagenet": (100_000, 200, 64), "imagenet": (1_281_167, 1000, 224), "cub200": (5_994, 200, 224),
            "aircraft": (6_667, 100, 224), "cars": (8_144, 196, 224)}

# The paper's Table 10: seconds per iteration of ResNet-18 on CIFAR-100 (batch 100) by N, N = 1
# being plain training: used for the ratios between them.
PAPER_S_PER_ITER = {1: 0.1584, 2: 0.1796, 3: 0.2418, 4: 0.2608, 5: 0.2786}
# The released AdAutoMix log's step (RTX 4090, N = 3) in that setting, and plain training's step
# there by Table 10's ratio.
RELEASED_ADAUTOMIX_S_PER_STEP = 0.0740
PLAIN_S_PER_STEP = RELEASED_ADAUTOMIX_S_PER_STEP * PAPER_S_PER_ITER[1] / PAPER_S_PER_ITER[3]
REFERENCE = dict(arch="r18", img_size=32, cifar_stem=True, num_classes=100, batch_size=100)


def method_step_cost(method: str, settings: dict[str, Any]) -> tuple[float, str]:
    """A method's step time over plain training's, and where the figure comes from."""
    if method == "adautomix":
        n = int(settings.get("mix_samples") or 3)
        return PAPER_S_PER_ITER[min(max(n, 1), 5)] / PAPER_S_PER_ITER[1], f"the paper's Table 10 at N = {n}"
    if method in ("automix", "samix"):
        # One mixed classifier pass, the EMA teacher's pass and the mix block: AdAutoMix's step at
        # N = 2 without its second student pass is the closest published figure.
        return PAPER_S_PER_ITER[2] / PAPER_S_PER_ITER[1], "assumed: AdAutoMix's Table 10 step at N = 2"
    if method == "puzzlemix":
        return 1.81, "this engine's measured CPU step ratio (docs/benchmarks.md)"
    if method == "sada":
        return 13.0, "this engine's measured CPU epoch ratio after its warm-up (docs/methods.md, SADA)"
    if method == "meada":
        return 1.0, "a plain step; its growing set is in the steps, its two generation passes are not"
    return 1.0, "one forward-backward pass, as plain training (docs/benchmarks.md)"


def forward_flops(arch: str, img_size: int, cifar_stem: bool, num_classes: int) -> Optional[float]:
    """Forward FLOPs of one image through the network, counted on the meta device; None where the
    network cannot be built there (a library model that needs its weights, ...)."""
    try:
        with torch.device("meta"):
            model = build_classifier(arch, num_classes, cifar_stem)
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 3, img_size, img_size))
        return float(counter.get_total_flops())
    except Exception:   # an estimate only: without FLOPs the plan says "unknown"
        return None


def train_images(dataset: str, subset: Optional[int]) -> Optional[int]:
    return subset if subset is not None else DATASETS.get(dataset, (None,))[0]


def steps_of(cfg, subset: Optional[int]) -> Optional[int]:
    """Optimizer steps of a run (ME-ADA: over its growing training set)."""
    images = train_images(cfg.dataset, subset)
    if images is None:
        return None
    per_epoch = max(images // cfg.batch_size, 1)
    if cfg.method == "meada":
        phases = phase_epochs(cfg.meada_every, cfg.meada_rounds, cfg.epochs)
        total, size = 0, per_epoch
        for epoch in range(cfg.epochs):       # 0-based, as phase_epochs counts
            if epoch in phases:
                size *= MEADA.phase_growth
            total += size
        return total
    return per_epoch * cfg.epochs


def measured_s_per_step(run_folder: str) -> Optional[float]:
    """Seconds per step of a run that has trained at least one epoch (its log), else None."""
    records = read_jsonl(f"{run_folder}/log.jsonl")
    epochs = [r for r in records if r.get("type") == "epoch" and r.get("train_time_s")]
    starts = [r for r in records if r.get("type") == "start" and r.get("steps_per_epoch")]
    if not epochs or not starts:
        return None
    steps = starts[-1]["steps_per_epoch"] * len(epochs)
    return sum(e["train_time_s"] for e in epochs) / steps if steps else None


class Estimator:
    """Per job: steps, seconds per step and their source, hours."""

    def __init__(self):
        self._flops: dict[tuple, Optional[float]] = {}

    def flops(self, arch: str, img_size: int, cifar_stem: bool, num_classes: int) -> Optional[float]:
        key = (arch, img_size, cifar_stem, num_classes)
        if key not in self._flops:
            self._flops[key] = forward_flops(*key)
        return self._flops[key]

    def estimate(self, cfg, subset: Optional[int], measured: Optional[float] = None) -> dict[str, Any]:
        steps = steps_of(cfg, subset)
        cost, why = method_step_cost(cfg.method, cfg.to_dict())
        if measured is not None:
            s, source = measured, "measured"
        else:
            _, classes, side = DATASETS.get(cfg.dataset, (None, 1000, 224))
            img = cfg.img_size or side
            stem = cfg.cifar_stem if cfg.cifar_stem is not None else img <= 64
            ours = self.flops(cfg.arch, img, stem, classes)
            ref = self.flops(REFERENCE["arch"], REFERENCE["img_size"], REFERENCE["cifar_stem"],
                             REFERENCE["num_classes"])
            if ours is None or not ref:
                return {"steps": steps, "s_per_step": None, "hours": None, "source": "unknown (FLOPs not countable)",
                        "cost": cost, "cost_source": why}
            s = PLAIN_S_PER_STEP * (ours * cfg.batch_size) / (ref * REFERENCE["batch_size"]) * cost
            source = f"scaled, cost {cost:.2f}x"
        hours = None if steps is None else steps * s / 3600
        return {"steps": steps, "s_per_step": s, "hours": hours, "source": source, "cost": cost, "cost_source": why}


SCALED_TEXT = (f"scaled: plain training's step in the released logs' setting ({PLAIN_S_PER_STEP:.4f} s on an RTX 4090; "
               "CIFAR-100, ResNet-18, batch 100) times the run's forward FLOPs per step over that setting's, times "
               "the method's step cost over plain training; measured: this comparison's own runs of the method "
               "(logged training time over steps). GPU-hours of one GPU; a planning figure, off by up to 2-3x "
               "until measured.")


def format_hours(hours: Optional[float]) -> str:
    if hours is None:
        return "unknown"
    return f"{hours:.2f}" if hours < 10 else f"{hours:.0f}" if hours < 1000 else f"{math.ceil(hours):,}"
