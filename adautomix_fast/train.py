"""``python -m adautomix_fast.train``: train (or evaluate, or export) an AdAutoMix classifier.

Shape of torchvision's reference script (parser, then ``main`` in a fixed order: config, device,
data, model, optimizer, resume, loop), timm's flag names. Every flag's help states its default.

Settings come from, lowest priority first: built-in defaults, the data set's published
defaults, ``--preset``, ``--config FILE.yaml``, then the flags typed on the command line. With
``--resume`` the checkpoint's config replaces the first four, and a flag that changes what is
trained (architecture, data set, schedule, ...) is refused.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import math
import os
import shutil
import sys
import time
from typing import Any, Optional

import torch

from . import checkpoint as ckpt_lib
from .adautomix import AdAutoMix
from .config import ARCHS, DATA_BACKENDS, DATASETS, GEN_KERNELS, IMPLS, PRESETS, Config, resolve
from .data import DATA_ENV, build_loaders
from .engine import Precision, ReferenceStep, Schedule, build_optimizer, build_step, resolve_impl
from .errors import UsageError
from .evaluate import HEADLINE, HEADS, evaluate
from .generator import resolve_gen_kernels

log = logging.getLogger("adautomix_fast")
D = Config()  # defaults shown in --help


# ---------------------------------------------------------------------------- arguments
class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a one-line UsageError (exit code 2) like every other input error."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def get_args_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m adautomix_fast.train",
        description="Train an image classifier with AdAutoMix (adversarial automatic mixup).",
        epilog="Published settings: --preset " + ", ".join(PRESETS) + ". Data sets other than the "
               f"bundled digits read --data-dir, or ${DATA_ENV}/<dataset> when it is not given.",
        argument_default=argparse.SUPPRESS,  # so that we know which flags were typed
    )
    BOOL = argparse.BooleanOptionalAction

    g = p.add_argument_group("run")
    g.add_argument("--preset", choices=list(PRESETS), help="published setting to start from (default: none)")
    g.add_argument("--config", metavar="FILE", help="YAML file of settings (config keys); flags override it")
    g.add_argument("--output", metavar="DIR", help=f"folder for run folders (default: {D.output})")
    g.add_argument("--run-name", help="run folder name (default: <dataset>-<arch>-<date-time>)")
    g.add_argument("--resume", metavar="CKPT", help="checkpoint file or run folder to continue exactly (default: none)")
    g.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint and exit")
    g.add_argument("--export", metavar="PATH", help="after training (or with --eval-only), write the teacher as a torchvision state dict")
    g.add_argument("--stop-after", type=int, metavar="EPOCHS", help="stop after this many epochs of this invocation (resume later with --resume)")
    g.add_argument("--seed", type=int, help=f"random seed of model init, data order and mixing (default: {D.seed})")
    g.add_argument("--log-interval", type=int, help=f"steps between training log records (default: {D.log_interval})")
    g.add_argument("--device", help=f"auto, cpu, cuda or cuda:N (default: {D.device}: the GPU when present)")
    g.add_argument("--impl", choices=list(IMPLS),
                   help="step implementation: fused (one compiled, CUDA-graph step) or reference (eager) "
                        "(default: auto: fused on CUDA, reference on CPU)")
    g.add_argument("--student-passes", choices=["batched", "separate"],
                   help="fused impl: student passes as one [3B] batch with segmented BatchNorm, or separate (default: batched)")
    g.add_argument("--teacher-bn-stats", choices=["exact", "single"],
                   help="fused impl: replay the reference's teacher BN running-stat updates (exact) or keep one per "
                        "real pass (single) (default: exact)")
    g.add_argument("--compile-mode", help="fused impl: torch.compile mode (default: reduce-overhead on CUDA, default on CPU)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} (default: {D.dataset}, bundled)")
    g.add_argument("--data-dir", metavar="DIR", help=f"data set folder (default: ${DATA_ENV}/<dataset>)")
    g.add_argument("--img-size", type=int, help="training image size (default: the data set's: 32, 64 or 224)")
    g.add_argument("-j", "--workers", type=int, help=f"data loading processes (default: {D.workers})")
    g.add_argument("--data-backend", choices=list(DATA_BACKENDS),
                   help="data pipeline (default: auto: DALI when it imports and the device is CUDA, else torch)")
    g.add_argument("--skip-corrupt", action=BOOL,
                   help="skip unreadable image files, counting them, instead of stopping (default: off)")

    g = p.add_argument_group("model")
    g.add_argument("--arch", help=f"one of {', '.join(ARCHS)} (default: {D.arch})")
    g.add_argument("--cifar-stem", action=BOOL, help="3x3 stride-1 stem without max-pool (default: automatic, images <= 64 px)")

    g = p.add_argument_group("AdAutoMix")
    g.add_argument("--mix-samples", type=int, help="N, images mixed per sample, 2..5 (default: 3; ImageNet: 2)")
    g.add_argument("--beta", type=float, help="weight of the adversarial teacher loss (default: 0.3; Tiny 0.4; ImageNet 0.1)")
    g.add_argument("--alpha", type=float, help="weight of the pixel-mixup loss in L_re, N >= 3 (default: 0.5)")
    g.add_argument("--lam-margin", type=float, help=f"margin rule: plain mixup when a ratio is this close to 0 or 1 (default: {D.lam_margin})")
    g.add_argument("--lam-concat", action=BOOL, help="feed lambda to the generator as a channel (default: off; ImageNet: on)")
    g.add_argument("--gen-norm", action=BOOL, help="BatchNorm in the generator's query/key projections (default: off; ImageNet: on)")
    g.add_argument("--upsample", choices=["bilinear", "nearest"], help=f"mask upsampling (default: {D.upsample})")
    g.add_argument("--gen-kernels", choices=list(GEN_KERNELS),
                   help="generator ops (default: auto: Triton kernels with the fused impl on CUDA, else PyTorch)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, help="epochs (default: digits 3, CIFAR 800, Tiny 400, ImageNet 100)")
    g.add_argument("-b", "--batch-size", type=int, help="images per step (default: 100; ImageNet: 256)")
    g.add_argument("--eval-batch-size", type=int, help="images per evaluation batch (default: --batch-size)")
    g.add_argument("--lr", type=float, help="peak learning rate (default: 0.1; Tiny: 0.2)")
    g.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule (default: 0; CIFAR: 0.05)")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default: {D.momentum})")
    g.add_argument("--weight-decay", "--wd", type=float, help=f"weight decay (default: {D.weight_decay})")
    g.add_argument("--gen-lr", type=float, help="generator's own learning rate (default: the student's; ImageNet: 0.1)")
    g.add_argument("--gen-min-lr", type=float, help="generator's final learning rate (default: --min-lr; ImageNet: 0.001)")
    g.add_argument("--lr-per-step", action=BOOL, help="anneal every step instead of every epoch (default: per epoch, as released)")
    g.add_argument("--ema-start", type=float, help=f"teacher EMA momentum at the start (default: {D.ema_start}; digits 0.9)")
    g.add_argument("--ema-end", type=float, help="teacher EMA momentum at the end (default: 0.999999; ImageNet 0.99999; digits 0.99)")
    g.add_argument("--ema-warmup", type=float, help=f"fraction of training at constant --ema-start (default: {D.ema_warmup})")

    g = p.add_argument_group("precision and layout")
    g.add_argument("--amp", action=BOOL, help="mixed precision autocast (default: on with CUDA, off on CPU)")
    g.add_argument("--amp-dtype", choices=["bf16", "fp16"], help=f"autocast dtype; fp16 adds a GradScaler (default: {D.amp_dtype})")
    g.add_argument("--channels-last", action=BOOL, help="channels-last memory format (default: on with CUDA, off on CPU)")
    return p


# argparse dest -> config key, for the flags that are config fields.
_RUN_ONLY = {"preset", "config", "resume", "eval_only", "export", "stop_after"}


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in _RUN_ONLY}


def load_yaml_settings(path: str) -> dict[str, Any]:
    import yaml
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: no such file")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of config keys")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(args: argparse.Namespace, resumed: Optional[dict]) -> Config:
    explicit = explicit_settings(args)
    if resumed is not None:
        base = dict(resumed["config"])
        base.update(explicit)
        cfg = Config.from_dict(base)
        cfg.validate()
        return cfg
    settings: dict[str, Any] = {}
    if getattr(args, "config", None):
        settings.update(load_yaml_settings(args.config))
    settings.update(explicit)
    preset = getattr(args, "preset", None) or settings.pop("preset", None)
    return resolve(settings, preset)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but torch sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return dev


# ---------------------------------------------------------------------------- run folder
class RunFolder:
    """config.yaml, log.jsonl (every K steps and every epoch) and summary.csv (one row per epoch)."""

    def __init__(self, path: str, created: bool):
        self.path = path
        self.created = created  # by this invocation: removed again if it fails before a checkpoint
        self.checkpoint_written = False

    @classmethod
    def open(cls, cfg: Config, resume_path: Optional[str], output_given: bool) -> "RunFolder":
        if resume_path is not None and not output_given:
            folder = os.path.dirname(os.path.abspath(resume_path)) if os.path.isfile(resume_path) else resume_path
            return cls(folder, created=False)
        name = cfg.run_name or f"{cfg.dataset}-{cfg.arch}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        folder = os.path.join(cfg.output, name)
        created = not os.path.exists(folder)
        if not created and os.path.exists(os.path.join(folder, "checkpoint-last.pt")) and resume_path is None:
            raise UsageError(f"run folder {folder} already holds a run; pass --resume {folder} to continue "
                             "it or choose another --run-name")
        os.makedirs(folder, exist_ok=True)
        return cls(folder, created)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_config(self, cfg: Config, extra: dict) -> None:
        import yaml
        data = {**cfg.to_dict(), **extra}
        tmp = self.file(".config.yaml.tmp")
        with open(tmp, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        os.replace(tmp, self.file("config.yaml"))

    def log(self, record: dict) -> None:
        with open(self.file("log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def summary_row(self, row: dict) -> None:
        path = self.file("summary.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def discard_if_incomplete(self) -> None:
        """Leave nothing half-written: a run folder this invocation created, and that never got
        a checkpoint, is removed again."""
        if self.created and not self.checkpoint_written and os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)


# ---------------------------------------------------------------------------- training loop
def train_one_epoch(step: ReferenceStep, loader, epoch: int, device: torch.device, cfg: Config,
                    run: RunFolder) -> dict:
    """One epoch; loss terms are summed on the device and read every ``log_interval`` steps."""
    from tqdm import tqdm

    loader.set_epoch(epoch)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    sums: dict[str, torch.Tensor] = {}
    epoch_sums: dict[str, float] = {}
    count = epoch_count = 0
    skipped_before = step_health(step).get("nonfinite_steps", 0)
    t0 = time.perf_counter()
    images = 0
    for x, y in bar:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        out = step(x, y)
        for k, v in out.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        count += 1
        images += x.shape[0]
        if count == cfg.log_interval:
            values = {k: float(v) / count for k, v in sums.items()}  # one host sync per interval
            health = step_health(step)
            skipped = health.get("nonfinite_steps", 0) - skipped_before
            skipped_before += skipped
            # The reference step has no guard: a non-finite loss has already reached the weights.
            # The fused step skips such steps on the device; stop only when it skipped them all.
            if not math.isfinite(values["loss"]) and ("nonfinite_steps" not in health or skipped >= count):
                raise FloatingPointError(
                    f"loss became {values['loss']} at step {step.global_step}; lower --lr, or with --amp "
                    "use --amp-dtype bf16")
            dt = time.perf_counter() - t0
            record = {"type": "train", "epoch": epoch + 1, "step": step.global_step,
                      "img_per_s": images / dt if dt > 0 else None, **values, **health}
            run.log(record)
            bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.4f}",
                            img_s=f"{record['img_per_s']:.0f}")
            for k, v in values.items():
                epoch_sums[k] = epoch_sums.get(k, 0.0) + v * count
            epoch_count += count
            sums, count, images, t0 = {}, 0, 0, time.perf_counter()
    if count:
        for k, v in sums.items():
            epoch_sums[k] = epoch_sums.get(k, 0.0) + float(v)
        epoch_count += count
    return {k: v / max(epoch_count, 1) for k, v in epoch_sums.items()}


def step_health(step) -> dict:
    """Counters the fused step keeps on the device, read at the log interval only: steps skipped
    for a non-finite loss or gradient, and graphs compiled after warm-up (0 is the target)."""
    health = {}
    if hasattr(step, "nonfinite_steps"):
        health["nonfinite_steps"] = int(step.nonfinite_steps)
    if hasattr(step, "recompiles_after_warmup") and step.recompiles_after_warmup() is not None:
        health["recompiles_after_warmup"] = step.recompiles_after_warmup()
    return health


def format_metrics(metrics: dict) -> str:
    lines = [f"{'head':<12} {'top-1':>7} {'top-5':>7}"]
    for h in HEADS:
        mark = "  <- headline" if h == HEADLINE else ""
        lines.append(f"{h:<12} {metrics[h + '_top1']:7.2f} {metrics[h + '_top5']:7.2f}{mark}")
    return "\n".join(lines)


def checkpoint_state(cfg: Config, model, optimizer, step: ReferenceStep, epoch: int, metrics: dict,
                     best: float, num_classes: int, cifar_stem: bool) -> dict:
    return {
        "format": "adautomix_fast", "version": ckpt_lib.FORMAT_VERSION,
        "config": cfg.to_dict(), "fingerprint": cfg.fingerprint(),
        "num_classes": num_classes, "cifar_stem": cifar_stem,
        "epoch": epoch, "global_step": step.global_step,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step.state_dict(),
        "rng": ckpt_lib.rng_state(), "metrics": metrics, "best_top1": best,
        "torch_version": str(torch.__version__),
    }


def run(argv: Optional[list[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    resume_path = getattr(args, "resume", None)
    eval_only = getattr(args, "eval_only", False)
    if eval_only and resume_path is None:
        raise UsageError("--eval-only needs a checkpoint: pass --resume CKPT")
    resumed = ckpt_lib.load(resume_path) if resume_path else None
    if resumed is not None and os.path.isdir(resume_path):
        resume_path = os.path.join(resume_path, "checkpoint-last.pt")
    cfg = build_config(args, resumed)
    if resumed is not None:
        ckpt_lib.check_compatible(resumed, cfg, resume_path)
    stop_after = getattr(args, "stop_after", None)
    if stop_after is not None and stop_after < 1:
        raise UsageError(f"--stop-after must be at least 1 (got {stop_after})")

    device = pick_device(cfg.device)
    # Defaults that depend on the device: bf16 autocast and channels-last on a GPU.
    if cfg.amp is None:
        cfg.amp = device.type == "cuda"
    if cfg.channels_last is None:
        cfg.channels_last = device.type == "cuda"
    torch.manual_seed(cfg.seed)

    # Data first: a missing or broken data set fails here, before anything is written.
    train_loader, val_loader, info = build_loaders(
        cfg.dataset, cfg.data_dir, cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        workers=cfg.workers, seed=cfg.seed, image_size=cfg.img_size, pin_memory=device.type == "cuda",
        backend=cfg.data_backend, device=device, skip_corrupt=cfg.skip_corrupt, channels_last=cfg.channels_last)
    cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else info.image_size <= 64
    if resumed is not None and resumed.get("num_classes") not in (None, info.num_classes):
        raise UsageError(f"checkpoint {resume_path} has {resumed['num_classes']} classes but the data "
                         f"set has {info.num_classes}; resume with the data it was trained on")

    model = AdAutoMix.from_config(cfg, info.num_classes, cifar_stem).to(device)
    impl = resolve_impl(cfg.impl, device)
    model.generator.kernels = resolve_gen_kernels(cfg.gen_kernels, impl, device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(cfg, steps_per_epoch=len(train_loader))
    precision = Precision.from_config(cfg, device)
    step = build_step(impl, model, optimizer, schedule, precision, cfg, device)

    start_epoch, best, metrics = 0, -1.0, {}
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        step.load_state_dict(resumed["step"])
        ckpt_lib.set_rng_state(resumed["rng"])
        start_epoch = int(resumed["epoch"])
        best = float(resumed.get("best_top1", -1.0))
        metrics = dict(resumed.get("metrics", {}))

    summary = (f"AdAutoMix {cfg.arch} on {cfg.dataset} ({info.train_size} train / {info.val_size} val images, "
               f"{info.num_classes} classes, {info.image_size}px{', CIFAR stem' if cifar_stem else ''}), "
               f"N={cfg.mix_samples}, device {device}, data {info.backend}, {precision.describe()}, impl {impl}, "
               f"generator ops {model.generator.kernels}")

    if eval_only:
        print(summary)
        metrics = evaluate(model, val_loader, device, precision, cfg.channels_last, progress=True)
        print(f"evaluation of {resume_path} (epoch {start_epoch}) on {metrics['images']} images:")
        print(format_metrics(metrics))
        if getattr(args, "export", None):
            export(model, args.export)
        return 0

    folder = RunFolder.open(cfg, resume_path, output_given="output" in vars(args))
    try:
        return _train(cfg, args, folder, summary, model, optimizer, step, train_loader, val_loader, info,
                      device, precision, start_epoch, best, metrics, cifar_stem, stop_after, resumed is not None)
    except BaseException:
        folder.discard_if_incomplete()
        raise


def _train(cfg, args, folder, summary, model, optimizer, step, train_loader, val_loader, info, device,
           precision, start_epoch, best, metrics, cifar_stem, stop_after, resuming) -> int:
    import yaml

    folder.write_config(cfg, {"num_classes": info.num_classes, "cifar_stem": cifar_stem,
                              "fingerprint": cfg.fingerprint(), "resolved_gen_kernels": model.generator.kernels})
    print(summary)
    print("config:\n  " + yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip().replace("\n", "\n  "))
    print(f"run folder: {folder.path}" + (f" (resuming after epoch {start_epoch})" if resuming else ""))
    folder.log({"type": "start", "time": time.time(), "resume_epoch": start_epoch if resuming else None,
                "device": str(device), "torch": str(torch.__version__), "steps_per_epoch": len(train_loader),
                "data_backend": info.backend,
                "gen_kernels": model.generator.kernels})

    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        train_stats = train_one_epoch(step, train_loader, epoch, device, cfg, folder)
        train_time = time.perf_counter() - t0
        metrics = evaluate(model, val_loader, device, precision, cfg.channels_last)
        top1 = metrics[f"{HEADLINE}_top1"]
        is_best = top1 > best
        best = max(best, top1)
        record = {"type": "epoch", "epoch": epoch + 1, "step": step.global_step, "train_time_s": train_time,
                  "img_per_s": len(train_loader) * cfg.batch_size / train_time,
                  **{f"train_{k}": v for k, v in train_stats.items()}, **metrics, "best_top1": best,
                  "skipped_corrupt": len(getattr(train_loader, "skipped", ()))}
        folder.log(record)
        folder.summary_row({"epoch": epoch + 1, "lr": train_stats.get("lr"), "train_loss": train_stats.get("loss"),
                            **{k: metrics[k] for k in metrics if k != "images"}, "best_top1": best})
        state = checkpoint_state(cfg, model, optimizer, step, epoch + 1, metrics, best, info.num_classes, cifar_stem)
        ckpt_lib.atomic_save(state, folder.file("checkpoint-last.pt"))
        folder.checkpoint_written = True
        if is_best:
            ckpt_lib.atomic_save(state, folder.file("checkpoint-best.pt"))
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {train_stats.get('loss', float('nan')):.4f}, "
              f"teacher_one top-1 {top1:.2f} (best {best:.2f}), {record['img_per_s']:.1f} img/s")

    if metrics:
        print(f"final top-1 of every head after epoch {end_epoch}:")
        print(format_metrics(metrics))
    if end_epoch < cfg.epochs:
        print(f"stopped after epoch {end_epoch} of {cfg.epochs}; continue with --resume {folder.path}")
    if getattr(args, "export", None):
        export(model, args.export)
    return 0


def export(model, path: str) -> None:
    sd = ckpt_lib.export_torchvision(model)
    ckpt_lib.atomic_save(sd, path)
    print(f"teacher exported as a torchvision state dict: {path}")


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
