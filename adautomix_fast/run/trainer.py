"""The training loop: epochs, logging, evaluation, checkpoints and exact resume.

One `Trainer` per process. In a distributed job every rank runs the same loop; the collective
parts (evaluation, averaging BatchNorm statistics, gathering random states for a checkpoint)
are called by every rank at the same step, and only rank 0 writes (its run folder is real, the
others' are silent).

Exact resume: a checkpoint holds the model, the optimizer, the step's state, every rank's random
states, the epoch and the number of batches already trained in it (`--save-every-steps` writes
checkpoints in the middle of an epoch). The data order and augmentation are functions of
(seed, epoch, index), so the resumed run sees the same batches from the same position.
"""

from __future__ import annotations

import csv
import os
import resource
import signal
import sys
import time
from typing import Callable, Optional

import torch
from tqdm import tqdm

from ..config import Config
from ..errors import RunDiverged, RunStopped
from ..evaluate import HEADLINE, HEADS, evaluate
from ..evaluate.curves import render_training_curves
from ..evaluate.mixvis import render_mix_grid, vis_epochs
from ..runtime.distributed import (
    DistContext,
    average_buffers_,
    fault_injection_step,
    gather_objects,
    launched_by_torchrun,
)
from ..runtime.stopsignals import StopRequest, exit_status, repeats_are_copies
from . import checkpoint as ckpt_lib
from .folder import BEST, EPOCH_END, LAST, RunFolder, describe_checkpoint
from .phase import ImageBank, phase_epochs_of, run_phase


def format_metrics(metrics: dict, heads=HEADS, headline: str = HEADLINE) -> str:
    lines = [f"{'head':<12} {'top-1':>7} {'top-5':>7}"]
    for h in heads:
        mark = "  <- headline" if h == headline else ""
        lines.append(f"{h:<12} {metrics[h + '_top1']:7.2f} {metrics[h + '_top5']:7.2f}{mark}")
    return "\n".join(lines)


def step_health(step) -> dict:
    """Counters the fused step keeps on the device, read at the log interval only: steps skipped
    for a non-finite loss or gradient, and graphs compiled after warm-up (0 is the target)."""
    health = {}
    if hasattr(step, "nonfinite_steps"):
        health["nonfinite_steps"] = int(step.nonfinite_steps)
    if hasattr(step, "recompiles_after_warmup") and step.recompiles_after_warmup() is not None:
        health["recompiles_after_warmup"] = step.recompiles_after_warmup()
    return health


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: allocated GPU memory on CUDA, the process's peak resident set on a CPU
    (getrusage; it includes everything the process holds, the data and the compiled code)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10


# Images of the fixed batch the generator's mask statistics are measured on (one trunk pass to
# the tap and one generator forward per epoch: enough images to average over, still cheap).
MASK_DIAGNOSTIC_IMAGES = 128


def summary_csv_columns(path: str) -> Optional[list[str]]:
    """The header of an existing summary.csv, or None when there is none yet."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), None)
    except OSError:
        return None
    return header or None


class Trainer:
    def __init__(self, *, cfg: Config, ctx: DistContext, device: torch.device, model, optimizer, step,
                 train_loader, val_loader, info, precision, cifar_stem: bool, folder: RunFolder,
                 say: Callable[[str], None]):
        self.cfg, self.ctx, self.device = cfg, ctx, device
        self.model, self.optimizer, self.step = model, optimizer, step
        self.train_loader, self.val_loader, self.info = train_loader, val_loader, info
        self.precision, self.cifar_stem, self.folder, self.say = precision, cifar_stem, folder, say
        self.epoch = 0            # completed epochs
        self.batch_in_epoch = 0   # batches of epoch `self.epoch` already trained (mid-epoch checkpoint)
        self.best = -1.0
        self.metrics: dict = {}
        self.fault = fault_injection_step()
        self.last_batch = None
        # SIGTERM/SIGUSR1/Ctrl-C while fit() runs: stop after the step, with a checkpoint there.
        self.stop = StopRequest(repeat_exits=not (launched_by_torchrun() or repeats_are_copies()))
        # Non-finite steps already accounted for (the step's device counter, and the step count,
        # at the last check).
        self._nonfinite_seen: Optional[int] = None
        self._steps_seen = 0
        # Epochs after which the primary rank saves the mixed-sample picture and the curves.
        self.draw_at: set[int] = set()
        if cfg.vis_every != 0 and folder.writes:
            self.draw_at = set(vis_epochs(cfg.epochs, cfg.vis_every))
        # A method with an epoch-start phase (run/phase.py) keeps the images it appends here.
        self.phases = phase_epochs_of(model, cfg.epochs)
        self.bank: Optional[ImageBank] = ImageBank() if hasattr(model, "phase_epochs") else None

    # ------------------------------------------------------------------ state
    def rng_state(self) -> dict:
        return ckpt_lib.rng_state(self.device, getattr(self.step, "plan_generator", None))

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step.load_state_dict(ckpt["step"])
        ranks = ckpt["rng"]["ranks"]
        if len(ranks) == self.ctx.world_size:
            ckpt_lib.set_rng_state(ranks[self.ctx.rank], self.device, getattr(self.step, "plan_generator", None))
        else:
            # Another number of processes: the data shards change anyway, so exactness is lost;
            # derive fresh, distinct random streams from the seed, the rank and the position.
            torch.manual_seed(self.cfg.seed + 1_000_003 * self.ctx.rank + int(ckpt["global_step"]))
            self.say(f"note: checkpoint written by {len(ranks)} processes, resumed by {self.ctx.world_size}: "
                     "training continues, but not bit for bit as an uninterrupted run")
        self.epoch = int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        self.best = float(ckpt.get("best_top1", -1.0))
        self.metrics = dict(ckpt.get("metrics", {}))
        if self.bank is not None and ckpt.get("bank") is not None:
            # The training loader over the grown set is rebuilt from it before (train.py).
            self.bank.load_state_dict(ckpt["bank"])

    def checkpoint(self) -> dict:
        """The checkpoint dict (collective: every rank must call it at the same step)."""
        average_buffers_(self.model, self.ctx)
        ranks = gather_objects(self.rng_state(), self.ctx)
        return {
            "format": "adautomix_fast", "version": ckpt_lib.FORMAT_VERSION,
            "config": self.cfg.to_dict(), "fingerprint": self.cfg.fingerprint(),
            "num_classes": self.info.num_classes, "cifar_stem": self.cifar_stem,
            "image_size": self.info.image_size,
            # The training set's identity: a resume on other data is refused (train.py).
            "train_size": self.info.train_size,
            "train_fingerprint": getattr(self.info, "train_fingerprint", None),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.step.global_step,
            "world_size": self.ctx.world_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "step": self.step.state_dict(), "rng": {"ranks": ranks},
            "bank": self.bank.state_dict() if self.bank is not None else None,
            "metrics": self.metrics, "best_top1": self.best, "torch_version": str(torch.__version__),
            "cpu_threads": torch.get_num_threads(),   # CPU results depend on it: a resume keeps it
        }

    def save(self, best: bool = False, records: Optional[dict] = None) -> None:
        """Write checkpoint-last.pt (and checkpoint-best.pt), collectively, after checking that
        training is still finite: a checkpoint never holds a non-finite weight, so the last good
        one survives a divergence. ``records``: the epoch's log record and summary row, kept in
        the checkpoint so that a run resumed from it can complete its records."""
        self.check_finite()
        bad = ckpt_lib.nonfinite_tensors(self.model.state_dict().items())
        bad_anywhere = [name for names in gather_objects(bad, self.ctx) for name in names]
        if bad_anywhere:
            raise self.diverged(f"{len(bad_anywhere)} weight or buffer tensors hold inf/NaN values "
                                f"(e.g. {bad_anywhere[0]})")
        state = self.checkpoint()
        if records is not None:
            state["records"] = records
        self.folder.save(state, LAST)
        if best:
            self.folder.save(state, BEST)

    # ------------------------------------------------------------------ divergence and stopping
    def check_finite(self) -> None:
        """Raise `RunDiverged` if a step since the last check had a non-finite loss (the reference
        step: any such step, its update reached the weights; the fused step skips such steps
        without changing anything, so only when it skipped every one). Reads the step's device
        counter: a host sync, so called at log intervals, epoch ends and before checkpoints only.
        Collective in a distributed run (every rank calls it at the same step)."""
        counter = getattr(self.step, "nonfinite_steps", None)
        if counter is None:
            return
        total, steps = int(counter), self.step.global_step
        if self._nonfinite_seen is None:   # train_epoch called without fit(): count from the start
            self._nonfinite_seen = 0
        new, span = total - self._nonfinite_seen, steps - self._steps_seen
        self._nonfinite_seen, self._steps_seen = total, steps
        per_rank = gather_objects((new, span), self.ctx)
        new, span = sum(n for n, _ in per_rank), sum(s for _, s in per_rank)
        if new and (not getattr(self.step, "skips_nonfinite", False) or new >= span):
            raise self.diverged(f"the loss was inf/NaN on {new} of the last {span} steps")

    def diverged(self, what: str) -> RunDiverged:
        """The one-line error of a diverged run: what happened, which checkpoint is kept and the
        command that resumes a finite one with a lower learning rate. A mid-epoch checkpoint of
        the diverging epoch is finite but may already hold exploding weights (the steps before
        the loss became inf/NaN); the command then starts from the epoch's start
        (checkpoint-epoch.pt) or the best checkpoint instead."""
        cfg, folder = self.cfg, self.folder
        lower = f"--override-lr --lr {cfg.lr / 10:g}" + (f" --gen-lr {cfg.gen_lr / 10:g}"
                                                         if cfg.gen_lr is not None else "")
        where = f"training diverged at step {self.step.global_step} (epoch {self.epoch + 1}): {what}"
        has_last = folder.last_saved is not None or os.path.exists(folder.file(LAST))
        has_best = os.path.exists(folder.file(BEST))
        best = f"checkpoint-best.pt (top-1 {self.best:.2f})" if self.best >= 0 else "checkpoint-best.pt"
        kept = folder.last_saved
        if not has_last:
            return RunDiverged(f"{where}; no checkpoint was written; start again with a lower learning rate "
                               f"({lower.replace('--override-lr ', '')})")
        if kept and kept.get("batch_in_epoch") and kept["epoch"] == self.epoch:
            state = f"{describe_checkpoint(kept)} ({folder.file(LAST)}) is finite but lies in the diverging epoch"
            if os.path.exists(folder.file(EPOCH_END)):
                also = f"; {best} is another start: --resume {folder.file(BEST)}" if has_best else ""
                return RunDiverged(f"{where}; {state}; resume from the end of epoch {kept['epoch']} with a lower "
                                   f"learning rate: --resume {folder.file(EPOCH_END)} {lower}{also}")
            if has_best:
                return RunDiverged(f"{where}; {state}; resume from {best} with a lower learning rate: "
                                   f"--resume {folder.file(BEST)} {lower}")
            return RunDiverged(f"{where}; {state} and no checkpoint before it is kept; start again with a lower "
                               f"learning rate ({lower.replace('--override-lr ', '')})")
        also = f" (or {best}: --resume {folder.file(BEST)} goes back to it)" if has_best else ""
        return RunDiverged(f"{where}; {describe_checkpoint(kept)} ({folder.file(LAST)}) is kept{also}; resume "
                           f"with a lower learning rate: --resume {folder.path} {lower}")

    def stop_requested(self) -> Optional[int]:
        """The signal that asked the run to stop, agreed by every rank (collective when
        distributed), or None."""
        signums = gather_objects(self.stop.signum, self.ctx)
        return next((s for s in signums if s is not None), None)

    def stopped(self, signum: int, mid_epoch: bool, phase: Optional[tuple[int, int]] = None) -> RunStopped:
        """The RunStopped of a stop signal; ``phase``: (images generated, images to generate) when
        the signal came during an epoch-start phase."""
        name = signal.Signals(signum).name
        self.folder.log({"type": "stop", "time": time.time(), "signal": name, "epoch": self.epoch,
                         "batch_in_epoch": self.batch_in_epoch, "step": self.step.global_step,
                         **({"phase_images": phase[0]} if phase else {})})
        if signum == signal.SIGINT:
            return RunStopped(f"interrupted; {describe_checkpoint(self.folder.last_saved)} in {self.folder.path} is "
                              f"kept: continue with --resume {self.folder.path}", exit_status(signum))
        at = (f"at epoch {self.epoch + 1}, batch {self.batch_in_epoch}" if mid_epoch
              else f"at the end of epoch {self.epoch}")
        if phase is not None:
            at = (f"during the {self.model.title} generation before epoch {self.epoch + 1}, {phase[0]} of {phase[1]} "
                  "images")
        return RunStopped(f"stopped by {name} {at} (step {self.step.global_step}); checkpoint "
                          f"{self.folder.file(LAST)} written; continue with --resume {self.folder.path}",
                          exit_status(signum))

    @torch.no_grad()
    def draw(self, epoch: int) -> None:
        """The epoch's pictures: a grid of the method's mixed samples on the last training batch
        (sources, masks, mixed images, lambdas), ``mix-epoch<NNNN>.png``, and ``curves.png`` from
        summary.csv. Drawn outside the step, from a plan of its own generator (seeded by the epoch):
        the training RNG, the compiled graph and every buffer are left as they were. A picture that
        cannot be drawn is reported, never fatal."""
        try:
            if self.last_batch is not None:
                x, y = self.last_batch
                model = self.model
                gen = torch.Generator(device=x.device).manual_seed(self.cfg.seed * 1000 + epoch)
                plan = model.sample_plan(x.shape[0], generator=gen, n=model.mix_samples_at(self.step.global_step),
                                         image_size=tuple(x.shape[-2:]))
                plan = model.complete_plan(x, y, plan)
                vis = model.visualize(x, y, plan)
                vis["title"] = f"{vis.get('title', '')} (epoch {epoch})"
                render_mix_grid(vis, self.folder.file(f"mix-epoch{epoch:04d}.png"), self.info.mean, self.info.std)
            render_training_curves(self.folder.file("summary.csv"), self.folder.file("curves.png"))
        except Exception as exc:  # a picture must never cost a training run
            self.say(f"note: the epoch-{epoch} pictures were not drawn ({type(exc).__name__}: "
                     f"{' '.join(str(exc).split())[:200]})")

    @torch.no_grad()
    def mask_diagnostics(self) -> dict:
        """``mask_spread`` and ``mask_lambda_gap`` of the generator's masks (methods with a learned
        generator; {} for the others), measured like ``draw`` works: outside the step, on a fixed
        batch (the first validation images, evaluation transform), from a plan drawn by a
        generator of its own. Its seed is the same at every epoch (``draw``'s seed for epoch 0), so
        the numbers change only with the weights, not with the lambdas drawn. The training RNG,
        the compiled graph and every buffer are left as they were (the model's
        ``mask_diagnostics`` runs in eval mode). A failure is reported, never fatal."""
        model = self.model
        if getattr(model, "generator", None) is None:
            return {}
        try:
            if getattr(self, "_diagnostic_batch", None) is None:   # read once per process
                # A DataLoader draws its workers' base seed from the CPU generator when iterated:
                # forked, so the training's random stream (and exact resume) stays as it was.
                with torch.random.fork_rng(devices=[]):
                    x, y = next(iter(self.val_loader))
                k = MASK_DIAGNOSTIC_IMAGES
                self._diagnostic_batch = (x[:k].to(self.device).float(), y[:k].to(self.device))
            x, y = self._diagnostic_batch
            gen = torch.Generator(device=x.device).manual_seed(self.cfg.seed * 1000)
            plan = model.sample_plan(x.shape[0], generator=gen, image_size=tuple(x.shape[-2:]))
            plan = model.complete_plan(x, y, plan)
            stats = model.mask_diagnostics(x, y, plan)
        except Exception as exc:  # a diagnostic must never cost a training run
            self.say(f"note: the generator's mask statistics were not measured ({type(exc).__name__}: "
                     f"{' '.join(str(exc).split())[:200]})")
            return {}
        return dict(stats or {})

    def summary_diagnostics(self, diagnostics: dict) -> dict:
        """The diagnostics that go into this run's summary.csv: all of them, unless the file
        already has a header without them (a run started before they were recorded, resumed):
        a row longer than its header would be dropped as torn by every reader."""
        header = summary_csv_columns(self.folder.file("summary.csv"))
        return {k: v for k, v in diagnostics.items() if header is None or k in header}

    def evaluate(self, progress: bool = False) -> dict:
        """Top-1/top-5 of the four heads over the whole validation set (collective)."""
        average_buffers_(self.model, self.ctx)
        return evaluate(self.model, self.val_loader, self.device, self.precision, self.cfg.channels_last,
                        progress=progress and self.ctx.primary, ctx=self.ctx)

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int, start_batch: int) -> dict:
        """One epoch from batch ``start_batch``; loss terms are summed on the device and read
        every ``log_interval`` steps."""
        cfg, step, loader = self.cfg, self.step, self.train_loader
        loader.set_epoch(epoch, start_batch=start_batch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader), initial=start_batch,
                   dynamic_ncols=True, mininterval=1.0, file=sys.stderr, disable=not self.ctx.primary)
        sums: dict[str, torch.Tensor] = {}
        epoch_sums: dict[str, float] = {}
        count = epoch_count = images = 0
        t0 = time.perf_counter()
        for index, (x, y) in enumerate(bar, start=start_batch):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            out = step(x, y)
            self.stop.interrupt_immediately = False   # a step to checkpoint: Ctrl-C now stops after one
            self.last_batch = (x, y)   # a reference, no copy: the epoch's picture is drawn from it
            self.batch_in_epoch = index + 1
            if self.fault is not None and step.global_step == self.fault[0] and self.ctx.rank == self.fault[1]:
                os._exit(17)   # test hook: a worker dies mid-epoch (distributed.fault_injection_step)
            for k, v in out.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1
            images += x.shape[0]
            if count == cfg.log_interval:
                values = {k: float(v) / count for k, v in sums.items()}  # one host sync per interval
                self.check_finite()
                health = step_health(step)
                dt = time.perf_counter() - t0
                record = {"type": "train", "epoch": epoch + 1, "step": step.global_step,
                          "img_per_s": images * self.ctx.world_size / dt if dt > 0 else None, **values, **health}
                self.folder.log(record)
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.4f}",
                                img_s=f"{record['img_per_s']:.0f}")
                for k, v in values.items():
                    epoch_sums[k] = epoch_sums.get(k, 0.0) + v * count
                epoch_count += count
                sums, count, images, t0 = {}, 0, 0, time.perf_counter()
            if (cfg.save_every_steps and step.global_step % cfg.save_every_steps == 0
                    and self.batch_in_epoch < len(loader)):
                self.save()
            # Single process: stop right after the step in flight. Distributed: the ranks agree
            # at log intervals (a collective), so that all stop after the same step.
            if (self.stop.signum is not None if not self.ctx.enabled
                    else step.global_step % cfg.log_interval == 0) and (signum := self.stop_requested()):
                bar.close()
                self.save()
                raise self.stopped(signum, mid_epoch=True)
        bar.close()
        if count:
            for k, v in sums.items():
                epoch_sums[k] = epoch_sums.get(k, 0.0) + float(v)
            epoch_count += count
        return {k: v / max(epoch_count, 1) for k, v in epoch_sums.items()}

    def fit(self, end_epoch: int) -> dict:
        with self.stop:
            self.stop.interrupt_immediately = True
            return self._fit(end_epoch)

    def _fit(self, end_epoch: int) -> dict:
        cfg = self.cfg
        self._nonfinite_seen = int(self.step.nonfinite_steps) if hasattr(self.step, "nonfinite_steps") else None
        self._steps_seen = self.step.global_step
        while self.epoch < end_epoch:
            epoch = self.epoch
            t0 = time.perf_counter()
            done_before = self.batch_in_epoch
            if epoch in self.phases and done_before == 0 and epoch not in self.bank.rounds:
                run_phase(self, epoch, self.save)
                t0 = time.perf_counter()   # the epoch's throughput counts its training steps only
            lengths = getattr(getattr(self.step, "schedule", None), "epoch_lengths", None)
            if lengths is not None and len(self.train_loader) != lengths[epoch]:   # the schedule's plan broken
                raise RuntimeError(f"epoch {epoch + 1} has {len(self.train_loader)} batches, its schedule "
                                   f"{lengths[epoch]}")
            train_stats = self.train_epoch(epoch, start_batch=done_before)
            train_time = time.perf_counter() - t0
            self.check_finite()
            self.epoch, self.batch_in_epoch = epoch + 1, 0
            self.metrics = self.evaluate()
            diagnostics = self.mask_diagnostics() if self.ctx.primary else {}
            top1 = self.metrics[f"{self.model.HEADLINE}_top1"]
            is_best = top1 > self.best
            self.best = max(self.best, top1)
            trained = (len(self.train_loader) - done_before) * cfg.batch_size * self.ctx.world_size
            record = {"type": "epoch", "epoch": epoch + 1, "step": self.step.global_step, "train_time_s": train_time,
                      "img_per_s": trained / train_time, **{f"train_{k}": v for k, v in train_stats.items()},
                      **self.metrics, "best_top1": self.best, "peak_memory_mib": peak_memory_mib(self.device),
                      "skipped_corrupt": len(getattr(self.train_loader, "skipped", ())), **diagnostics}
            row = {"epoch": epoch + 1, "lr": train_stats.get("lr"), "train_loss": train_stats.get("loss"),
                   **{k: self.metrics[k] for k in self.metrics if k != "images"}, "best_top1": self.best,
                   **self.summary_diagnostics(diagnostics)}
            # The checkpoint first, then the epoch's records: a failed save records nothing, and
            # a run resumed from this checkpoint writes any records the process did not.
            self.save(best=is_best, records={"log": record, "summary": row})
            self.folder.log(record)
            self.folder.summary_row(row)
            if self.ctx.primary and epoch + 1 in self.draw_at:
                self.draw(epoch + 1)
            self.say(f"epoch {epoch + 1}/{cfg.epochs}: loss {train_stats.get('loss', float('nan')):.4f}, "
                     f"{self.model.HEADLINE} top-1 {top1:.2f} (best {self.best:.2f}), {record['img_per_s']:.1f} img/s")
            signum = self.stop_requested()
            if signum is not None and self.epoch < end_epoch:
                raise self.stopped(signum, mid_epoch=False)
        return self.metrics


__all__ = ["Trainer", "format_metrics", "step_health"]
