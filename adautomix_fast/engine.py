"""Optimizer, schedules, precision and the reference train step.

`ReferenceStep` runs one step of any method eagerly: sample the plan, compute every loss
(``model.step_losses``) under autocast, one backward, gradient clipping when the recipe asks
(``torch.nn.utils.clip_grad_norm_``), one optimizer step (SGD or AdamW) for the student and the
generator together, then (methods with a teacher) the EMA update of the teacher. It is the
readable definition of a step; the fused, compiled step (adautomix_fast.fused) is tested
against it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from .config import Config
from .ema import ema_momentum, momentum_tensor
from .optim import build_optimizer as _build_optimizer
from .optim import cosine_lr, group_role, set_group_lrs, warmup_factor
from .precision import resolve_precision


# ---------------------------------------------------------------------------- schedules
@dataclass
class Schedule:
    """Learning rates and EMA momentum as functions of the global step.

    The released ResNet configs anneal the learning rate once per epoch (mmcv ``by_epoch=True``):
    epoch e uses progress e / epochs. ``lr_per_step`` anneals every step instead (the transformer
    recipes). ``warmup_epochs`` > 0 multiplies the first ``warmup_steps`` by mmcv's linear warm-up
    factor (``optim.warmup_factor``: ``warmup_ratio`` at step 0, joining the cosine continuously);
    the factor is exactly 1 afterwards and without warm-up, so the SGD presets' learning rates are
    exactly the plain cosine's floats.
    """

    cfg: Config
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return int(round(self.cfg.warmup_epochs * self.steps_per_epoch))

    def progress(self, step: int) -> float:
        if self.cfg.lr_per_step:
            return step / max(self.total_steps, 1)
        return (step // self.steps_per_epoch) / self.cfg.epochs

    def lrs(self, step: int) -> tuple[float, float]:
        """(student lr, generator lr) for global step ``step``."""
        p = self.progress(step)
        warm = warmup_factor(step, self.warmup_steps, self.cfg.warmup_ratio)
        lr = cosine_lr(self.cfg.lr, self.cfg.min_lr, p) * warm
        if self.cfg.gen_lr is None:
            return lr, lr
        gen_min = self.cfg.gen_min_lr if self.cfg.gen_min_lr is not None else self.cfg.min_lr
        return lr, cosine_lr(self.cfg.gen_lr, gen_min, p) * warm

    def ema(self, step: int) -> float:
        return ema_momentum(step, self.total_steps, self.cfg.ema_start, self.cfg.ema_end, self.cfg.ema_warmup)


# ---------------------------------------------------------------------------- optimizer
def build_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    """The run's optimizer over the student and the generator (``optim.build_optimizer``).

    ``cfg.optimizer`` "sgd" (momentum ``cfg.momentum``, the released ResNet recipes) or "adamw"
    (``cfg.adam_beta1/2``, ``cfg.adam_eps``; the transformer and ConvNeXt recipes). Parameter
    groups, in this order (``optim.param_groups``):

        0 student, 1 generator, 2 student_no_decay, 3 generator_no_decay

    Groups 2-3 exist only with weight-decay exclusions (``cfg.wd_exclude``; default on with
    AdamW): norms, biases, position tables and layer scales get weight decay 0. The generator
    groups exist only for methods with a generator, and follow the generator's own learning rate
    and schedule when ``cfg.gen_lr`` is set (otherwise the student's). Every group carries its
    ``role`` ("student" / "generator"), which ``set_lrs`` and the fused step follow. SGD without
    exclusions gives exactly the engine's original two groups.
    """
    return _build_optimizer(model, cfg)


def set_lrs(optimizer: torch.optim.Optimizer, lrs: tuple[float, float]) -> None:
    """(student lr, generator lr) -> every parameter group by its role."""
    set_group_lrs(optimizer, lrs)


def has_generator_group(optimizer: torch.optim.Optimizer) -> bool:
    return any(group_role(g) == "generator" for g in optimizer.param_groups)


# ---------------------------------------------------------------------------- precision
@dataclass
class Precision:
    """Autocast settings. bf16 autocast needs no loss scaling; fp16 uses a GradScaler.

    ``reason`` says why this precision was chosen (printed in the run summary, logged in the
    start record); ``warning`` is a line to print before training when an explicit choice will run
    slowly on this machine (adautomix_fast.precision).
    """

    device_type: str
    dtype: Optional[torch.dtype]  # None: full fp32
    reason: str = ""
    warning: Optional[str] = None

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> "Precision":
        """``cfg.amp`` None (neither --amp nor --no-amp) picks by what the device computes
        natively: bf16 on a GPU or CPU with native bf16, fp32 elsewhere."""
        choice = resolve_precision(cfg.amp, cfg.amp_dtype, device)
        return cls(device.type, choice.dtype, choice.reason, choice.warning)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self):
        if self.dtype is torch.float16:
            return torch.amp.GradScaler(self.device_type)
        return None

    def describe(self) -> str:
        return "fp32" if self.dtype is None else f"autocast {str(self.dtype).replace('torch.', '')}"


# ---------------------------------------------------------------------------- the step
class ReferenceStep:
    """One eager step of any method: losses, one backward, gradient clipping (``max_grad_norm``:
    the total L2 norm of every trained gradient, student and generator together, as mmcv's
    ``OptimizerHook(grad_clip=...)``), one optimizer step, EMA update."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 precision: Precision, channels_last: bool = False,
                 plan_generator: Optional[torch.Generator] = None, forward=None,
                 max_grad_norm: Optional[float] = None):
        self.model = model
        # What computes the losses: the model itself, or its DistributedDataParallel wrapper
        # (whose forward is the model's, plus the gradient all-reduce hooks).
        self.forward = forward if forward is not None else model
        self.optimizer = optimizer
        self.schedule = schedule
        self.precision = precision
        self.scaler = precision.make_scaler()
        self.channels_last = channels_last
        self.plan_generator = plan_generator
        self.max_grad_norm = max_grad_norm
        self.global_step = 0  # host copy of model.num_updates (schedules are host-side here)
        # Steps whose loss was not finite, counted on the device (no host sync per step) and read
        # by the trainer at log intervals, epoch ends and before checkpoints. Unlike the fused
        # step this one does not skip such a step: its update has reached the weights.
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64)
        self.skips_nonfinite = False

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, x: torch.Tensor, y: torch.Tensor, plan=None) -> dict[str, torch.Tensor]:
        """Run one step and return the detached loss terms (still on the device: no sync)."""
        model = self.model
        model.train()
        x = self.prepare(x)
        step = self.global_step
        lrs = self.schedule.lrs(step)
        set_lrs(self.optimizer, lrs)
        model.set_schedule(step, self.schedule.total_steps)
        if plan is None:
            plan = model.sample_plan(x.shape[0], generator=self.plan_generator, n=model.mix_samples_at(step),
                                     image_size=tuple(x.shape[-2:]))
            plan = model.complete_plan(x, y, plan)

        with self.precision.autocast():
            losses = self.forward(x, y, plan)
        bad = (~torch.isfinite(losses["loss"].detach())).to(torch.int64)
        self.nonfinite_steps = self.nonfinite_steps.to(bad.device).add_(bad)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(losses["loss"]).backward()
            if self.max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)   # clip the true gradients
                self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            losses["loss"].backward()
            if self.max_grad_norm is not None:
                self._clip()
            self.optimizer.step()

        if model.has_teacher:
            momentum = self.schedule.ema(step)
            model.update_teacher(momentum_tensor(momentum, model.device))
        model.num_updates.add_(1)
        self.global_step += 1

        out = {k: v.detach() for k, v in losses.items()}
        out["lr"] = torch.tensor(lrs[0])
        if has_generator_group(self.optimizer):
            out["lr_gen"] = torch.tensor(lrs[1])
        if model.has_teacher:
            out["ema_momentum"] = torch.tensor(momentum)
        return out

    def _clip(self) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)

    # Resumable state beyond the model's and the optimizer's state dicts (the plan generator's
    # state is saved per rank with the other random states: checkpoint.rng_state).
    def state_dict(self) -> dict:
        state = {"global_step": self.global_step}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def make_plan_generator(device: torch.device, seed: int) -> torch.Generator:
    """A dedicated RNG for lambda and the permutations, seeded from the run seed, so that the
    plan stream is reproducible and independent of everything else that draws random numbers."""
    g = torch.Generator(device=device)
    g.manual_seed(seed + 0x5EED)
    return g


# ---------------------------------------------------------------------------- choosing the step
def resolve_impl(choice: str, device: torch.device) -> str:
    """auto: the fused, compiled step on CUDA; the eager reference step on a CPU (compiling the
    whole step for the CPU costs minutes and gains little there)."""
    if choice == "auto":
        return "fused" if device.type == "cuda" else "reference"
    return choice


def build_step(impl: str, model, optimizer, schedule: Schedule, precision: Precision,
               cfg: Config, device: torch.device, *, rank: int = 0, forward=None, grad_sync=None):
    """The train step of the resolved implementation (same call and state API for both).

    Distributed: ``forward`` is the reference model's DDP wrapper, ``grad_sync`` the fused step's
    in-graph gradient all-reduce; each rank draws its own mixing plans (seed offset by rank).
    """
    plan_generator = make_plan_generator(device, cfg.seed + 7919 * rank)
    if impl == "fused":
        from .fused import FusedStep
        return FusedStep(model, optimizer, schedule, precision, channels_last=cfg.channels_last,
                         mode=cfg.compile_mode, backend=getattr(cfg, "compile_backend", "inductor"),
                         batched_student=cfg.student_passes == "batched",
                         teacher_bn_stats=cfg.teacher_bn_stats, plan_generator=plan_generator,
                         grad_sync=grad_sync, max_grad_norm=getattr(cfg, "clip_grad", None))
    return ReferenceStep(model, optimizer, schedule, precision, channels_last=cfg.channels_last,
                         plan_generator=plan_generator, forward=forward,
                         max_grad_norm=getattr(cfg, "clip_grad", None))
