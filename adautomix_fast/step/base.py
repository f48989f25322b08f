"""What every train step does on the host, once: the bookkeeping shared by the reference step
(:mod:`.reference`) and the fused step (:mod:`.fused`).

Per step, in this order: train mode and the memory format of the batch; the global step's
learning rates (written to the optimizer by the step's own ``set_lrs``), EMA momentum and the
method's own schedules (:mod:`.schedules`); the number of images mixed (methods that vary it);
the mixing plan when the caller gives none; afterwards the step count and the logged values
(learning rates, momentum). The step subclasses only compute the losses and the update.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .optim import group_role
from .schedules import Schedule


class StepSettings(NamedTuple):
    """The host-side values of one global step."""

    step: int
    lrs: tuple[float, float]          # (student lr, generator lr)
    momentum: Optional[float]         # the EMA teacher's momentum (None without a teacher)
    n: Optional[int]                  # images mixed this step, for methods that vary it


def make_plan_generator(device: torch.device, seed: int) -> torch.Generator:
    """A dedicated RNG for lambda and the permutations, seeded from the run seed, so that the
    plan stream is reproducible and independent of everything else that draws random numbers."""
    g = torch.Generator(device=device)
    g.manual_seed(seed + 0x5EED)
    return g


class TrainStep:
    """The shared bookkeeping of a train step (module docstring). Subclasses implement
    ``set_lrs(lrs)`` and ``__call__(x, y, plan=None)`` and extend ``state_dict``."""

    # Whether a step with a non-finite loss leaves the weights as they were (the fused step) or
    # has already updated them (the eager step, whose optimizer cannot select on the device).
    skips_nonfinite = False

    def __init__(self, model, optimizer: torch.optim.Optimizer, schedule: Schedule, precision, *,
                 channels_last: bool = False, plan_generator: Optional[torch.Generator] = None):
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.precision = precision
        self.channels_last = channels_last
        # Draws the plans made on the host side of the step (every plan of the reference step;
        # in the fused step only those of methods whose plan cannot be drawn in its graph).
        self.plan_generator = plan_generator
        self.logs_generator_lr = any(group_role(g) == "generator" for g in optimizer.param_groups)
        self.global_step = 0   # host copy of model.num_updates: the schedules are host functions

    def set_lrs(self, lrs: tuple[float, float]) -> None:
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Train mode, and the batch in the step's memory format."""
        self.model.train()
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def begin_step(self) -> StepSettings:
        """This global step's learning rates (set), EMA momentum, method schedules (set) and N."""
        model, step = self.model, self.global_step
        lrs = self.schedule.lrs(step)
        self.set_lrs(lrs)
        momentum = self.schedule.ema(step) if model.has_teacher else None
        model.set_schedule(step, self.schedule.total_steps)
        return StepSettings(step, lrs, momentum, model.mix_samples_at(step))

    def draw_plan(self, x: torch.Tensor, y: torch.Tensor, n: Optional[int]):
        """A complete plan for this batch, drawn from the step's plan generator."""
        plan = self.model.sample_plan(x.shape[0], generator=self.plan_generator, n=n, image_size=tuple(x.shape[-2:]))
        return self.model.complete_plan(x, y, plan)

    def end_step(self, out: dict[str, torch.Tensor], settings: StepSettings) -> dict[str, torch.Tensor]:
        """Count the step and add the logged schedule values to its outputs."""
        self.global_step += 1
        out["lr"] = torch.tensor(settings.lrs[0])
        if self.logs_generator_lr:
            out["lr_gen"] = torch.tensor(settings.lrs[1])
        if settings.momentum is not None:
            out["ema_momentum"] = torch.tensor(settings.momentum)
        return out

    # Resumable state beyond the model's and the optimizer's state dicts. The plan generator's
    # state is here for the library API's users, whose own checkpoints hold only state dicts;
    # the trainer also saves it per rank with the other random states (checkpoint.rng_state)
    # and restores those after this, so each rank keeps its own stream.
    def state_dict(self) -> dict:
        state = {"global_step": self.global_step}
        if self.plan_generator is not None:
            state["plan_rng"] = self.plan_generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        if self.plan_generator is not None and "plan_rng" in state:
            self.plan_generator.set_state(state["plan_rng"])


__all__ = ["StepSettings", "TrainStep", "make_plan_generator"]
