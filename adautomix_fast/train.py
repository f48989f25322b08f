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
import dataclasses
import errno
import logging
import os
import sys
import time
from typing import Any, Optional

import torch
import yaml

from . import registry
from .config import Config, resolve
from .data import DATA_ENV, AugmentRecipe, build_loaders, check_resume_data
from .errors import CompiledStepError, RunDiverged, RunStopped, UsageError
from .methods.generator import kernel_limit_problem, resolve_gen_kernels
from .models import arch_spec, default_cifar_stem, drop_path_rate, load_pretrained_model
from .models.library import check_backbone_image_size, fitting_image_size
from .models.specs import is_library_arch
from .presets import PRESETS, engine_default_text, method_default_text, preset_help
from .registry import METHODS, build_model, image_side
from .run import checkpoint as ckpt_lib
from .run.appended import restore_appended, schedule_lengths
from .run.folder import LAST, RunFolder, SilentRunFolder, default_run_name, describe_checkpoint
from .run.trainer import Trainer, format_metrics
from .runtime import cputhreads, distributed, provenance
from .runtime.devices import pick_device
from .settings import GROUPS, RUN, SETTINGS
from .step import precision as precision_lib
from .step.build import build_step, resolve_impl
from .step.optim import build_optimizer, wd_exclude
from .step.precision import Precision
from .step.schedules import Schedule

log = logging.getLogger("adautomix_fast")


# ---------------------------------------------------------------------------- arguments
class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a one-line UsageError (exit code 2) like every other input error."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def get_args_parser() -> argparse.ArgumentParser:
    """The training CLI: the run's actions (resume, evaluate, export ...) written here, then one
    flag per declared setting (``settings.SETTINGS``) and per method option, by section."""
    p = _Parser(
        prog="python -m adautomix_fast.train",
        description="Train an image classifier with AdAutoMix (adversarial automatic mixup).",
        epilog="Published settings: --preset " + preset_help() + ". Data sets other than the "
               f"bundled digits read --data-dir, or ${DATA_ENV}/<dataset> when it is not given.",
        argument_default=argparse.SUPPRESS,  # so that we know which flags were typed
    )
    g = p.add_argument_group(RUN)
    g.add_argument("--config", metavar="FILE", help="YAML file of settings (config keys); flags override it")
    g.add_argument("--resume", metavar="CKPT", help="checkpoint file or run folder to continue exactly (default: none)")
    g.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint and exit")
    g.add_argument("--export", metavar="PATH", help="after training (or with --eval-only), write the teacher as the "
                   "state dict of its library's model (torchvision, timm, or this package's CIFAR networks)")
    g.add_argument("--override-lr", action="store_true",
                   help="with --resume: let --lr, --min-lr, --gen-lr and --gen-min-lr change the schedule from the "
                        "resumed step on (e.g. a lower lr after a divergence); recorded in log.jsonl")
    g.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: continue on a training set other than the checkpoint's (files added, "
                        "removed or replaced); not bit for bit, and an interrupted epoch that no longer fits "
                        "restarts (default: such a resume is refused)")
    g.add_argument("--stop-after", type=int, metavar="EPOCHS",
                   help="stop after this many epochs of this invocation (resume later with --resume)")
    groups = {RUN: g}
    for name in GROUPS:
        if name not in groups:
            groups[name] = p.add_argument_group(name)
    for option in SETTINGS:
        add_setting(groups[option.group], option, engine_default_text(option),
                    choices=list(PRESETS) if option.name == "preset" else None)
    for cls in METHODS.values():
        add_method_options(p, cls)
    return p


def add_setting(group, option, default_text: str, choices: Optional[list[str]] = None) -> None:
    """The flag of one declared setting: its spellings, type or choices, and help ending with
    the default (``default_text``: from the tables that apply it)."""
    kwargs: dict[str, Any] = {"help": f"{option.help} (default: {default_text})", "dest": option.name}
    if option.type is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif choices or (option.choices and option.cli_choices):
        kwargs["choices"] = choices or list(option.choices)
        kwargs["metavar"] = option.metavar
        if option.none_word:       # 'none' switches off a preset's value: None among the choices
            kwargs["type"] = _none_or(str)
            kwargs["metavar"] = option.metavar or "{" + ",".join(kwargs["choices"] + ["none"]) + "}"
            kwargs["choices"] = kwargs["choices"] + [None]
    else:
        if option.choices:     # checked by the config, which names the choices in its message
            kwargs["help"] = f"{option.help}, one of {', '.join(option.choices)} (default: {default_text})"
        kwargs["type"] = _none_or(option.type) if option.none_word else option.type
        kwargs["metavar"] = option.metavar or option.name.split("_")[-1].upper()
    group.add_argument(*option.flags, **kwargs)


def _none_or(kind: type):
    """A parser of ``kind`` that reads 'none' as None (to switch off a preset's value)."""
    def parse(text: str):
        if text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def add_method_options(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per option a method declares (methods/options.py), in a group of its own; the
    help names every method that takes it."""
    own = vars(cls).get("options", ())
    if not own:
        return
    g = parser.add_argument_group(f"{cls.title} options (--method {cls.name})")
    for option in own:
        who = ", ".join(registry.takers(option.name))
        add_setting(g, dataclasses.replace(option, help=f"{who}: {option.help}"), method_default_text(option, cls))


def recipe_settings(cfg: Config) -> str:
    """The optimizer and the recipe for the run summary, e.g. "AdamW lr 0.0005 (G 0.001), wd 0.05
    (none on norms/biases/position tables), warm-up 20 ep, cosine per step to 0.0001, clip 10,
    drop path 0.2, RandAugment rand-m7-n2-mstd0.5"."""
    name = {"sgd": f"SGD momentum {cfg.momentum:g}", "adamw": "AdamW"}[cfg.optimizer]
    gen = f" (G {cfg.gen_lr:g})" if cfg.gen_lr is not None and cfg.method in ("adautomix", "automix") else ""
    parts = [f"{name} lr {cfg.lr:g}{gen}",
             f"wd {cfg.weight_decay:g}" + (" (none on norms/biases/position tables)" if wd_exclude(cfg) else "")]
    if cfg.warmup_epochs:
        parts.append(f"warm-up {cfg.warmup_epochs:g} ep")
    parts.append(f"cosine per {'step' if cfg.lr_per_step else 'epoch'} to {cfg.min_lr:g}")
    if cfg.clip_grad is not None:
        parts.append(f"clip {cfg.clip_grad:g}")
    drop = drop_path_rate(cfg.arch, cfg.drop_path)
    if drop:
        parts.append(f"drop path {drop:g}")
    if cfg.label_smoothing:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    if cfg.randaugment:
        parts.append(f"RandAugment {cfg.randaugment}")
    return ", ".join(parts)


# argparse dest -> config key, for the flags that are config fields.
_RUN_ONLY = {"preset", "config", "resume", "eval_only", "export", "stop_after", "override_lr", "allow_data_change"}
# The settings --override-lr lets a resumed run change: the learning-rate schedule's values only.
LR_OVERRIDES = ("lr", "min_lr", "gen_lr", "gen_min_lr")


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in _RUN_ONLY}


def load_yaml_settings(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: no such file")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of config keys")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise UsageError(f"--config {path}: key {bad_keys[0]!r} is not a name; keys are config names such as lr "
                         "or batch_size")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(args: argparse.Namespace, resumed: Optional[dict]) -> Config:
    explicit = explicit_settings(args)
    if resumed is not None:
        base = dict(resumed["config"])
        base.update(explicit)
        cfg = Config.from_dict(base)
        cfg.validate()
        registry.check_foreign_options(cfg.method, explicit)
        return cfg
    settings: dict[str, Any] = {}
    if getattr(args, "config", None):
        settings.update(load_yaml_settings(args.config))
    settings.update(explicit)
    preset = getattr(args, "preset", None) or settings.pop("preset", None)
    cfg = resolve(settings, preset)
    # A flag of another method's option would be ignored: say so (a config file written by an
    # earlier run may hold such values; they stay harmless).
    registry.check_foreign_options(cfg.method, explicit)
    return cfg


# ---------------------------------------------------------------------------- the run
def run(argv: Optional[list[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    ctx, dist_device = distributed.init(getattr(args, "device", "auto"))
    try:
        return _run(args, ctx, dist_device)
    finally:
        distributed.shutdown(ctx)


def _auto_resume_path(args: argparse.Namespace) -> Optional[str]:
    """A worker group restarted by torchrun continues from the newest complete checkpoint of its
    run folder (same name on every restart: the torchrun run id, or --run-name)."""
    if getattr(args, "resume", None) is not None or not distributed.launched_by_torchrun():
        return getattr(args, "resume", None)
    if distributed.restart_count() == 0:
        return None
    cfg = build_config(args, None)
    folder = os.path.join(cfg.output, cfg.run_name or default_run_name(cfg, distributed.run_id()))
    return folder if os.path.exists(os.path.join(folder, LAST)) else None


def _run(args: argparse.Namespace, ctx: distributed.DistContext, dist_device: Optional[torch.device]) -> int:
    say = print if ctx.primary else (lambda *a, **k: None)
    resume_path = _auto_resume_path(args)
    eval_only = getattr(args, "eval_only", False)
    if eval_only and resume_path is None:
        raise UsageError("--eval-only needs a checkpoint: pass --resume CKPT")
    resumed = ckpt_lib.load(resume_path) if resume_path else None
    if resumed is not None and os.path.isdir(resume_path):
        resume_path = os.path.join(resume_path, LAST)
    cfg = build_config(args, resumed)
    lr_changes = lr_overrides(args, resumed, cfg)
    if resumed is not None:
        ckpt_lib.check_compatible(resumed, cfg, resume_path, allowed=tuple(lr_changes))
    stop_after = getattr(args, "stop_after", None)
    if stop_after is not None and stop_after < 1:
        raise UsageError(f"--stop-after must be at least 1 (got {stop_after})")

    device = dist_device if dist_device is not None else pick_device(cfg.device)
    if resumed is not None and device.type == "cpu":
        cputhreads.keep_for_resume(resumed.get("cpu_threads"))
    # Defaults that depend on the device: channels-last on a GPU; the precision (cfg.amp None:
    # bf16 only where the device computes it natively) is resolved by Precision below and
    # recorded with its reason, while cfg.amp keeps the user's choice (a checkpoint resumed on
    # another machine decides again).
    if cfg.channels_last is None:
        cfg.channels_last = device.type == "cuda"
    impl = resolve_impl(cfg.impl, device)
    if cfg.sync_bn and ctx.enabled and (impl == "fused" or device.type != "cuda"):
        raise UsageError("--sync-bn needs CUDA and --impl reference (SyncBatchNorm runs on GPUs only, and the "
                         "fused step's segmented BatchNorm does not synchronise); drop --sync-bn")
    torch.manual_seed(cfg.seed)   # the same initial weights on every rank

    def loaders():
        return build_loaders(
            cfg.dataset, cfg.data_dir, cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
            workers=cfg.workers, seed=cfg.seed, image_size=cfg.img_size, pin_memory=device.type == "cuda",
            rank=ctx.rank, world_size=ctx.world_size,
            backend=cfg.data_backend, device=device, skip_corrupt=cfg.skip_corrupt,
            channels_last=cfg.channels_last, recipe=AugmentRecipe.from_config(cfg), train_subset=cfg.train_subset)

    # Data first: a missing or broken data set fails here, before anything is written.
    train_loader, val_loader, info = loaders()
    # Automatic stem: the CIFAR stem for small images, where the architecture has one (Swin and
    # DeiT have none; their CIFAR presets resize to 224).
    cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else default_cifar_stem(info.image_size, cfg.arch)
    if resumed is not None and resumed.get("num_classes") not in (None, info.num_classes):
        raise UsageError(f"checkpoint {resume_path} has {resumed['num_classes']} classes but the data "
                         f"set has {info.num_classes}; resume with the data it was trained on")
    # A method that appends images to the training set (ME-ADA): one process, an in-memory set;
    # a resumed run's appended images rejoin it before the position is checked.
    train_loader = restore_appended(cfg, ctx, train_loader, info, resumed, resume_path)
    if resumed is not None and not eval_only:
        # The data order is a function of (seed, epoch, image index): on other images the saved
        # position means other batches, or none. Every rank sees the same data: all decide alike.
        for note in check_resume_data(resumed, resume_path, info, len(train_loader), ctx.world_size,
                                      allow=getattr(args, "allow_data_change", False)):
            say(f"note: {note}", file=sys.stderr)

    model = build_model(cfg, info.num_classes, cifar_stem, info.image_size)
    registry.check_method(cfg, info.image_size)   # again, at the size the data decided
    # A library backbone's limits are read from the built model: still before anything is written.
    # Without --img-size, a data set too small for it (digits for a stride-16 tap) is resized
    # to the smallest size it takes (over the preset's size); a size the user chose is only checked.
    chosen = "img_size" in vars(args) or resumed is not None
    fitted = None if chosen else fitting_image_size(model.student, info.image_size)
    if fitted is not None:
        say(f"note: {cfg.arch} cannot take the {info.image_size} px images of {cfg.dataset}; "
            f"training at {fitted} px (--img-size sets another size)", file=sys.stderr)
        cfg.img_size = fitted
        train_loader, val_loader, info = loaders()
    check_backbone_image_size(model.student, info.image_size)
    pretrained = None
    if cfg.pretrained and resumed is None:
        # The student loads the weights (its heads start fresh), the teacher copies it, the
        # generator keeps its initialisation; a bad path or a state dict of another architecture
        # stops here in one line, before anything is written. A resumed run holds its weights.
        pretrained = load_pretrained_model(model, cfg.pretrained)
    model = model.to(device)
    if hasattr(model, "generator"):
        model.generator.kernels = resolve_gen_kernels(cfg.gen_kernels, impl, device)
        if model.generator.kernels == "triton" and hasattr(model.student, "tap_side"):
            problem = kernel_limit_problem(model.generator, model.student.tap_side(info.image_size),
                                           info.image_size, cfg.mix_samples)
            if problem:
                model.generator.kernels = "torch"
                if ctx.primary:
                    print(f"note: the Triton generator kernels cannot take the tap of {cfg.arch} ({problem}); "
                          "using the PyTorch generator", file=sys.stderr)
    if cfg.sync_bn and ctx.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(cfg, steps_per_epoch=len(train_loader),
                        epoch_lengths=schedule_lengths(model, cfg, info, ctx.world_size))
    precision = Precision.from_config(cfg, device)
    if precision.warning and ctx.primary:
        print(precision.warning, file=sys.stderr)
    forward = grad_sync = None
    if ctx.enabled:
        if impl == "reference":
            forward = distributed.wrap_reference_model(model, ctx, device)
        else:
            grad_sync = distributed.make_graph_grad_sync(ctx)
            distributed.broadcast_module_(model, ctx)
    step = build_step(impl, model, optimizer, schedule, precision, cfg, device, rank=ctx.rank,
                      forward=forward, grad_sync=grad_sync)
    if ctx.enabled:
        # Distinct mixing streams per rank for the fused step's in-graph sampling.
        torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank)

    global_batch = cfg.batch_size * ctx.world_size
    parts = [f"{info.train_size} train / {info.val_size} val images, {info.num_classes} classes, "
             f"{info.image_size}px{', CIFAR stem' if cifar_stem else ''}"
             f"{', ' + info.describe() if info.describe() else ''}"]
    method = METHODS[cfg.method]
    details = [method.describe(cfg, image_side(cfg, info.image_size)), recipe_settings(cfg), f"device {device}",
               f"data {info.backend}", precision.reason, f"impl {impl}"]
    if device.type == "cpu":
        threads = cputhreads.describe()
        details.append(f"{threads['cpu_threads']} CPU threads ({threads['cpu_threads_reason']})")
    if hasattr(model.student, "describe"):   # a library backbone: what was read from it
        recipe = arch_spec(cfg.arch).options.get("recipe") if is_library_arch(cfg.arch) else None
        details.append(f"backbone {model.student.describe()}, "
                       + (f"{recipe} family defaults" if recipe else "generic defaults (no published recipe)"))
    if pretrained is not None:
        details.append(f"pretrained {pretrained['path']} ({pretrained['loaded']} tensors; heads fresh)")
    if hasattr(model, "generator"):
        details.append(f"generator ops {model.generator.kernels}")
    if ctx.enabled:
        details.append(f"{ctx.world_size} processes ({ctx.backend}), global batch {global_batch}")
    summary = (f"{method.title} {cfg.arch} on {cfg.dataset} ({parts[0]}), "
               + ", ".join(d for d in details if d))

    folder_path = (os.path.dirname(os.path.abspath(resume_path))
                   if resume_path is not None and "output" not in vars(args)
                   else os.path.join(cfg.output, cfg.run_name or _shared_run_name(cfg, ctx)))
    if eval_only:
        trainer = Trainer(cfg=cfg, ctx=ctx, device=device, model=model, optimizer=optimizer, step=step,
                          train_loader=train_loader, val_loader=val_loader, info=info, precision=precision,
                          cifar_stem=cifar_stem, folder=SilentRunFolder(folder_path), say=say)
        trainer.load(resumed)
        say(summary)
        metrics = trainer.evaluate(progress=True)
        say(f"evaluation of {resume_path} (epoch {trainer.epoch}) on {metrics['images']} images:")
        say(format_metrics(metrics, model.HEADS, model.HEADLINE))
        if getattr(args, "export", None) and ctx.primary:
            export(model, args.export, cfg.arch)
        return 0

    folder = _open_run_folder(folder_path, cfg.fingerprint(), resumed, resume_path, ctx)
    if cfg.tensorboard:
        folder.attach_tensorboard()
    trainer = Trainer(cfg=cfg, ctx=ctx, device=device, model=model, optimizer=optimizer, step=step,
                      train_loader=train_loader, val_loader=val_loader, info=info, precision=precision,
                      cifar_stem=cifar_stem, folder=folder, say=say)
    if resumed is not None:
        trainer.load(resumed)
    if hasattr(step, "failure_hint"):
        step.failure_hint = f"the last checkpoint in {folder.path} is kept (resume from it with --resume {folder.path})"
    try:
        return _train(cfg, args, trainer, summary, impl, stop_after, resumed is not None, global_batch, lr_changes)
    except KeyboardInterrupt:
        kept = folder.last_saved is not None
        folder.discard_if_incomplete()
        raise RunStopped(f"interrupted; {describe_checkpoint(folder.last_saved)} in {folder.path} is kept: continue "
                         f"with --resume {folder.path}" if kept else
                         "interrupted before the first checkpoint; nothing was kept", 130) from None
    except BaseException:
        folder.discard_if_incomplete()
        raise
    finally:
        folder.close()


def lr_overrides(args: argparse.Namespace, resumed: Optional[dict], cfg: Config) -> dict[str, list]:
    """{name: [checkpoint's value, new value]} of the learning-rate settings ``--override-lr``
    changes on ``--resume``; a one-line error for the flag without --resume."""
    if not getattr(args, "override_lr", False):
        return {}
    if resumed is None:
        raise UsageError("--override-lr changes the schedule of a resumed run: pass --resume RUN as well")
    saved = resumed["config"]
    changes = {k: [saved.get(k), getattr(cfg, k)] for k in LR_OVERRIDES if saved.get(k) != getattr(cfg, k)}
    if not changes:
        raise UsageError("--override-lr without a new value: pass the settings to change, e.g. --lr "
                         f"{(saved.get('lr') or 0.1) / 10:g}")
    return changes


def _open_run_folder(path: str, fingerprint: str, resumed: Optional[dict], resumed_from: Optional[str],
                     ctx: distributed.DistContext) -> RunFolder:
    """Rank 0 creates and locks the run folder; every rank learns whether that worked, so that a
    refusal (locked, not writable) ends every rank with the same one line."""
    folder, problem = None, None
    if ctx.primary:
        try:
            folder = RunFolder.open(path, fingerprint, resuming=resumed, resumed_from=resumed_from)
        except UsageError as exc:
            problem = str(exc)
    problem = distributed.broadcast_object(problem, ctx)
    if problem is not None:
        raise UsageError(problem)
    return folder if folder is not None else SilentRunFolder(path)


def _shared_run_name(cfg: Config, ctx: distributed.DistContext) -> str:
    """The default run folder name, the same on every rank: torchrun's run id when there is one
    (stable across restarts), else rank 0's date-time."""
    rid = distributed.run_id() if distributed.launched_by_torchrun() else None
    if rid is None and distributed.max_restarts() > 0:
        raise UsageError("torchrun --max-restarts needs a run folder that restarted workers can find: "
                         "pass --run-name NAME (or torchrun --rdzv-id ID)")
    return distributed.broadcast_object(default_run_name(cfg, rid), ctx)


def _train(cfg, args, trainer: Trainer, summary: str, impl: str, stop_after, resuming: bool,
           global_batch: int, lr_changes: dict) -> int:
    folder, say, ctx = trainer.folder, trainer.say, trainer.ctx
    folder.write_config(cfg, {
        "num_classes": trainer.info.num_classes, "cifar_stem": trainer.cifar_stem,
        "fingerprint": cfg.fingerprint(), "impl_resolved": impl,
        "gen_kernels_resolved": getattr(getattr(trainer.model, "generator", None), "kernels", None),
        "precision_resolved": trainer.precision.describe(),
        "world_size": ctx.world_size, "global_batch_size": global_batch})
    say(summary)
    say("config:\n  " + yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip().replace("\n", "\n  "))
    where = (f" (resuming after epoch {trainer.epoch}"
             + (f", batch {trainer.batch_in_epoch}" if trainer.batch_in_epoch else "") + ")")
    say(f"run folder: {folder.path}" + (where if resuming else ""))
    if lr_changes:
        say("learning rate overridden from here on: "
            + ", ".join(f"{k} {a:g} -> {b:g}" if a is not None and b is not None else f"{k} {a} -> {b}"
                        for k, (a, b) in lr_changes.items()))
    folder.log({"type": "start", "time": time.time(), "resume_epoch": trainer.epoch if resuming else None,
                "resume_batch": trainer.batch_in_epoch if resuming else None,
                "restart": distributed.restart_count(), "world_size": ctx.world_size,
                "device": str(trainer.device), **provenance.describe(),
                "steps_per_epoch": len(trainer.train_loader), "impl": impl, "data_backend": trainer.info.backend,
                "data_layout": trainer.info.describe(),
                "gen_kernels": getattr(getattr(trainer.model, "generator", None), "kernels", None),
                "method": trainer.cfg.method, "precision": trainer.precision.describe(),
                "precision_reason": trainer.precision.reason, **precision_facts(trainer.device),
                **cputhreads.describe(),
                **({"lr_override": lr_changes} if lr_changes else {})})

    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, trainer.epoch + stop_after)
    metrics = trainer.fit(end_epoch)
    if metrics:
        say(f"final top-1 of every head after epoch {trainer.epoch}:")
        say(format_metrics(metrics, trainer.model.HEADS, trainer.model.HEADLINE))
    if trainer.epoch < cfg.epochs:
        say(f"stopped after epoch {trainer.epoch} of {cfg.epochs}; continue with --resume {folder.path}")
    if getattr(args, "export", None) and ctx.primary:
        export(trainer.model, args.export, cfg.arch)
    return 0


def precision_facts(device: torch.device) -> dict:
    """What the precision decision read, for the log's start record."""
    if device.type == "cuda":
        return {"cuda_bf16": bool(torch.cuda.is_bf16_supported())}
    return {"cpu_" + k: v for k, v in precision_lib.cpu_facts().items()}


def export(model, path: str, arch: str) -> None:
    sd = ckpt_lib.export_torchvision(model)
    bad = ckpt_lib.nonfinite_tensors(sd.items())
    if bad:
        raise UsageError(f"--export {path}: the model holds inf/NaN values ({len(bad)} tensors, e.g. {bad[0]}); "
                         "nothing was exported: export a checkpoint from before the divergence")
    ckpt_lib.atomic_save(sd, path)
    spec = arch_spec(arch)
    # the CIFAR networks have no torchvision twin: their state dict is the package's own constructor's
    print(f"teacher exported as a state dict for {spec.constructor}: {path}")


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (RunDiverged, CompiledStepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except RunStopped as e:
        if distributed.primary_process():   # every rank stopped alike: rank 0 says so for all
            print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:   # before the run folder existed
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except OSError as e:
        # A record or the config written on a disk that cannot take it (checkpoints say more).
        if e.errno not in (*ckpt_lib.DISK_FULL_ERRNOS, errno.EROFS):
            raise
        fix = "raise the file-size limit (ulimit -f)" if e.errno == errno.EFBIG else "free some space"
        print(f"error: {e.strerror} writing {e.filename or 'the run folder'}; {fix} (or pass --output DIR on "
              "another disk) and resume with --resume", file=sys.stderr)
        return 2


def cli() -> None:
    cputhreads.configure()   # the command line only: a library caller keeps its own thread count
    sys.exit(main())


if __name__ == "__main__":
    cli()
