"""A method's epoch-start phase: a pass over the whole training set whose results join it.

A method declares ``phase_epochs(epochs)`` (the 0-based epochs at whose start it runs),
``phase_batch(x, y)`` (normalised images in, normalised images out) and ``phase_growth`` (the
set's size is multiplied by it at each phase: one new image per current image). ME-ADA is such
a method: its adversarial images are appended to the training set for good.

The trainer runs the phase before the epoch's first batch: the model in eval mode, the current
set (the data set's images and every image appended so far) in order through the evaluation
transform, in batches of the training batch size, on the run's device. Each result is stored
as the uint8 image the data set's own images are (denormalised, clamped, truncated) in the
:class:`ImageBank`, which the checkpoint holds: a resumed run rebuilds the grown set from it.
A stop signal during a phase saves a checkpoint holding the images generated so far, and the
resumed run continues the phase at the next image (the pass draws nothing at random and the
weights do not change during it, so the result is the uninterrupted one).

The epochs' lengths follow from the phases (``epoch_sizes``), so the learning-rate and EMA
schedules know the whole run's steps from the start.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from tqdm import tqdm

from ..data.appended import grown_loader, plain_loader


def phase_epochs_of(model, epochs: int) -> tuple[int, ...]:
    """The 0-based epochs at whose start ``model`` runs its phase (none for most methods)."""
    declared = getattr(model, "phase_epochs", None)
    return tuple(declared(epochs)) if declared is not None else ()


def epoch_sizes(model, base_size: int, epochs: int) -> list[int]:
    """The training set's size in each epoch: ``base_size`` times ``phase_growth`` per phase run
    by then."""
    phases = set(phase_epochs_of(model, epochs))
    growth = getattr(model, "phase_growth", 1)
    sizes, size = [], base_size
    for epoch in range(epochs):
        if epoch in phases:
            size *= growth
        sizes.append(size)
    return sizes


def to_uint8_hwc(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised images [B,C,H,W] as the uint8 [B,H,W,C] images of an in-memory split:
    denormalised, clamped to [0, 1], times 255 and truncated (torchvision's ``ToPILImage``)."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    pixels = (x.float() * s + m).clamp(0.0, 1.0).mul(255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu()


class ImageBank:
    """The images appended to the training set: uint8 [M,H,W,3], their labels, the epochs whose
    phase is complete, and the images of a phase in progress (``pending``)."""

    def __init__(self):
        self.images: Optional[torch.Tensor] = None
        self.labels = torch.zeros(0, dtype=torch.long)
        self.rounds: list[int] = []
        self.pending_epoch: Optional[int] = None
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pending_count(self) -> int:
        return sum(int(y.shape[0]) for _, y in self.pending)

    def start(self, epoch: int) -> None:
        if self.pending_epoch != epoch:
            self.pending_epoch, self.pending = epoch, []

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.pending.append((images, labels.cpu().long()))

    def finish(self) -> None:
        """The pending phase's images join the bank."""
        parts = ([(self.images, self.labels)] if self.images is not None else []) + self.pending
        self.images = torch.cat([x for x, _ in parts])
        self.labels = torch.cat([y for _, y in parts])
        self.rounds.append(int(self.pending_epoch))
        self.pending_epoch, self.pending = None, []

    def state_dict(self) -> dict:
        pending = None
        if self.pending_epoch is not None:
            pending = {"epoch": self.pending_epoch,
                       "images": torch.cat([x for x, _ in self.pending]) if self.pending else None,
                       "labels": torch.cat([y for _, y in self.pending]) if self.pending else None}
        return {"images": self.images, "labels": self.labels, "rounds": list(self.rounds), "pending": pending}

    def load_state_dict(self, state: dict) -> None:
        self.images, self.labels = state["images"], state["labels"].long()
        self.rounds = [int(e) for e in state["rounds"]]
        pending = state.get("pending")
        self.pending_epoch = None if pending is None else int(pending["epoch"])
        self.pending = ([(pending["images"], pending["labels"].long())]
                        if pending is not None and pending["images"] is not None else [])


def run_phase(trainer, epoch: int, save: Callable[[], None]) -> None:
    """The phase of ``epoch`` (module docstring): generate, keep, grow the training loader.
    ``save`` writes a checkpoint (with the bank) when a stop signal or ``--save-every-steps``
    asks for one mid-phase; a stop signal then raises the trainer's RunStopped."""
    model, bank, cfg, info = trainer.model, trainer.bank, trainer.cfg, trainer.info
    bank.start(epoch)
    done = bank.pending_count()
    loader = plain_loader(trainer.train_loader, cfg.batch_size, start=done)
    total = len(loader.dataset)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    bar = tqdm(loader, desc=f"{model.title} generation before epoch {epoch + 1}", total=len(loader), unit="batch",
               dynamic_ncols=True, mininterval=1.0, disable=not trainer.ctx.primary)
    try:
        for batch, (x, y) in enumerate(bar, start=1):
            x = x.to(trainer.device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(trainer.device, non_blocking=True)
            bank.add(to_uint8_hwc(model.phase_batch(x, y), info.mean, info.std), y)
            trainer.stop.interrupt_immediately = False
            if cfg.save_every_steps and batch % cfg.save_every_steps == 0 and bank.pending_count() < total:
                save()
            if (signum := trainer.stop.signum) is not None and bank.pending_count() < total:
                bar.close()
                save()
                raise trainer.stopped(signum, mid_epoch=False, phase=(bank.pending_count(), total))
    finally:
        bar.close()
        model.train(was_training)
    added = bank.pending_count()
    bank.finish()
    base = trainer.info.train_size
    trainer.train_loader = grown_loader(trainer.train_loader, bank.images, bank.labels)
    seconds = time.perf_counter() - t0
    trainer.folder.log({"type": "phase", "epoch": epoch + 1, "method": model.name, "images_added": added,
                        "train_images": base + len(bank), "time_s": seconds, "step": trainer.step.global_step})
    trainer.say(f"{model.title}: {added} images generated before epoch {epoch + 1} ({seconds:.1f} s in this "
                f"process); the training set now holds {base + len(bank)} images")


__all__ = ["ImageBank", "epoch_sizes", "phase_epochs_of", "run_phase", "to_uint8_hwc"]
