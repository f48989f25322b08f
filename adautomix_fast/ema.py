"""The EMA teacher: momentum schedule and parameter update (ALGORITHM.md section 6).

After every optimizer step the teacher's *parameters* follow the student's:
    theta_k <- m * theta_k + (1 - m) * theta_q
Buffers (BatchNorm running statistics) are not touched: the teacher keeps its own, updated by
its own train-mode forward passes.

The momentum is handed to the update as a 0-dim fp32 tensor on the parameters' device, so a
captured CUDA graph can read a new value every step without re-capture (the fused op of csrc/
takes the same argument). This module's update is the pure PyTorch twin of that op.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def ema_momentum(step: int, total_steps: int, start: float = 0.999, end: float = 0.999999,
                 warmup: float = 0.1) -> float:
    """Momentum used after optimizer step ``step`` (0-based) of a run of ``total_steps``.

    Constant ``start`` while step < warmup * total_steps, then
    m = end - (end - start) * (cos(pi * step / total_steps) + 1) / 2.
    """
    total_steps = max(int(total_steps), 1)
    if step < warmup * total_steps:
        return float(start)
    return float(end - (end - start) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0)


def momentum_tensor(value: float, device: torch.device | str) -> torch.Tensor:
    """The momentum as the 0-dim fp32 device tensor the update reads."""
    return torch.tensor(float(value), dtype=torch.float32, device=device)


@torch.no_grad()
def ema_update_(ema: Sequence[torch.Tensor], model: Sequence[torch.Tensor], momentum: torch.Tensor) -> None:
    """In place, for every pair: ema <- momentum * ema + (1 - momentum) * model.

    One multi-tensor call (a few kernels in total) instead of a Python loop of several kernels
    and allocations per tensor. ``momentum`` is a 0-dim fp32 tensor.
    """
    ema, model = list(ema), list(model)
    if len(ema) != len(model):
        raise ValueError(f"ema_update_: {len(ema)} EMA tensors but {len(model)} model tensors")
    if not ema:
        return
    weight = (1.0 - momentum).to(ema[0].dtype)
    if any(m.dtype != e.dtype for e, m in zip(ema, model)):
        model = [m.to(e.dtype) for e, m in zip(ema, model)]
    torch._foreach_lerp_(ema, model, weight)


def teacher_pairs(teacher: torch.nn.Module, student: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(teacher parameters, student parameters) in matching order, checked by name."""
    t_named = dict(teacher.named_parameters())
    s_named = dict(student.named_parameters())
    if t_named.keys() != s_named.keys():
        raise ValueError("teacher and student have different parameter names")
    names = list(s_named)
    return [t_named[n].data for n in names], [s_named[n].data for n in names]
