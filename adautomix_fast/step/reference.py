"""The reference train step: the readable, eager definition of one step of any method.

Sample the plan, compute every loss (``model.step_losses``) under autocast, one backward,
gradient clipping when the recipe asks (``torch.nn.utils.clip_grad_norm_``), one optimizer step
(SGD or AdamW) for the student and the generator together, then (methods with a teacher) the EMA
update of the teacher. The fused, compiled step (:mod:`.fused`) is tested against it.
"""

from __future__ import annotations

from typing import Optional

import torch

from .base import TrainStep
from .ema import momentum_tensor
from .optim import set_group_lrs
from .precision import Precision
from .schedules import Schedule


class ReferenceStep(TrainStep):
    """One eager step of any method: losses, one backward, gradient clipping (``max_grad_norm``:
    the total L2 norm of every trained gradient, student and generator together, as mmcv's
    ``OptimizerHook(grad_clip=...)``), one optimizer step, EMA update."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 precision: Precision, channels_last: bool = False,
                 plan_generator: Optional[torch.Generator] = None, forward=None,
                 max_grad_norm: Optional[float] = None):
        super().__init__(model, optimizer, schedule, precision, channels_last=channels_last,
                         plan_generator=plan_generator)
        # What computes the losses: the model itself, or its DistributedDataParallel wrapper
        # (whose forward is the model's, plus the gradient all-reduce hooks).
        self.forward = forward if forward is not None else model
        self.scaler = precision.make_scaler()
        self.max_grad_norm = max_grad_norm
        # Steps whose loss was not finite, counted on the device (no host sync per step) and read
        # by the trainer at log intervals, epoch ends and before checkpoints. Unlike the fused
        # step this one does not skip such a step: its update has reached the weights.
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64)

    def set_lrs(self, lrs: tuple[float, float]) -> None:
        set_group_lrs(self.optimizer, lrs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, plan=None) -> dict[str, torch.Tensor]:
        """Run one step and return the detached loss terms (still on the device: no sync)."""
        model = self.model
        x = self.prepare(x)
        settings = self.begin_step()
        if plan is None:
            plan = self.draw_plan(x, y, settings.n)

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

        if settings.momentum is not None:
            model.update_teacher(momentum_tensor(settings.momentum, model.device))
        model.num_updates.add_(1)
        return self.end_step({k: v.detach() for k, v in losses.items()}, settings)

    def _clip(self) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


__all__ = ["ReferenceStep"]
