"""Choosing and building a run's train step: the reference (eager) or the fused (compiled) one,
with the same call and state API."""

from __future__ import annotations

import torch

from .base import make_plan_generator
from .fused import FusedStep
from .precision import Precision
from .reference import ReferenceStep
from .schedules import Schedule

# --impl: the eager reference step, the compiled fused one, or auto (resolve_impl).
IMPLS = ("auto", "reference", "fused")


def resolve_impl(choice: str, device: torch.device) -> str:
    """auto: the fused, compiled step on CUDA; the eager reference step on a CPU (compiling the
    whole step for the CPU costs minutes and gains little there)."""
    if choice == "auto":
        return "fused" if device.type == "cuda" else "reference"
    return choice


def build_step(impl: str, model, optimizer, schedule: Schedule, precision: Precision,
               cfg, device: torch.device, *, rank: int = 0, forward=None, grad_sync=None):
    """The train step of the resolved implementation.

    Distributed: ``forward`` is the reference model's DDP wrapper, ``grad_sync`` the fused step's
    in-graph gradient all-reduce; each rank draws its own mixing plans (seed offset by rank).
    """
    plan_generator = make_plan_generator(device, cfg.seed + 7919 * rank)
    if impl == "fused":
        return FusedStep(model, optimizer, schedule, precision, channels_last=cfg.channels_last,
                         mode=cfg.compile_mode, backend=getattr(cfg, "compile_backend", "inductor"),
                         batched_student=cfg.student_passes == "batched",
                         teacher_bn_stats=cfg.teacher_bn_stats, plan_generator=plan_generator,
                         grad_sync=grad_sync, max_grad_norm=getattr(cfg, "clip_grad", None))
    return ReferenceStep(model, optimizer, schedule, precision, channels_last=cfg.channels_last,
                         plan_generator=plan_generator, forward=forward,
                         max_grad_norm=getattr(cfg, "clip_grad", None))


__all__ = ["build_step", "resolve_impl"]
