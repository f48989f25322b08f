"""The fused AdAutoMix step: one torch.compile'd function, CUDA-graph captured on a GPU.

It computes the same losses, gradients and updates as the reference step (docs/algorithm.md) with
four changes that do not alter the mathematics (the first two: docs/algorithm.md, Fused arrangement):

1. **One teacher pass on the clean batch.** Train-mode BatchNorm statistics do not depend on the
   order of the samples, so f_k(x[pi_i]) = f_k(x)[pi_i]: the clean pass gives both the
   generator's stage-3 features and every cosine-source logit (the reference runs N more teacher
   forwards). Only the teacher's BatchNorm *running* statistics could differ: the reference
   updates them N + 2 times per step (x, x_g, the N sources), one pass here updates them twice.
   With ``teacher_bn_stats="exact"`` (the default) the N source updates are replayed from the
   clean batch's statistics right after the x_g pass, which reproduces the reference's sequence
   of running statistics; ``"single"`` keeps only the two real updates.
2. **Batched student passes.** The clean batch, the pixel mixup (N >= 3) and the generated mix
   run as one [3B] (or [2B]) forward/backward through a segmented BatchNorm that normalises each
   segment of B by its own statistics and applies the running-statistics updates in the
   reference's order: exactly the separate passes, with fewer, larger kernels
   (``batched_student=False`` keeps three passes).
3. **Everything on the device.** lambda and the permutations are sampled inside the function from
   the default generator (graph-safe on CUDA); the adversarial/cooperative choice and the margin
   rule are ``torch.where`` selections; learning rates, EMA momentum and the fp16 loss scale are
   0-dim device tensors updated in place between steps; the optimizer (SGD or AdamW, with
   gradient clipping: ``optim.InGraphOptimizer``) is written with ``torch._foreach_*`` ops and
   gradients come from ``torch.autograd.grad`` inside the graph (``optimizer.step()`` would break
   the graph: docs/compile.md, fact 1). No ``.item()``, no Python branch on a value.
4. **Non-finite steps are skipped on the device.** If the loss or any gradient is not finite, the
   optimizer update (parameters and every optimizer state tensor, AdamW's step count included),
   the EMA update and the BatchNorm running statistics of that step are discarded
   (selected with ``torch.where``, no host sync), the fp16 loss scale backs off, and a device
   counter records the step; the trainer reads the counter at its log interval.

The optimizer's state tensors (SGD momentum buffers; AdamW moments and step counts) live in the
torch.optim object's state, so checkpoints of the fused and the reference implementation are
interchangeable.
"""

from __future__ import annotations

import types
from typing import Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import CompiledStepError, UsageError
from ..runtime import fatal
from .base import TrainStep
from .ema import MOMENTUM_DTYPE, ema_update_
from .optim import InGraphOptimizer, unscale_and_check_
from .segmented_bn import SegmentedBatchNorm2d, convert_batchnorm, set_segment_size, unconverted_batchnorms

# fp16 loss scaling, as torch.amp.GradScaler's defaults.
_SCALE_INIT, _GROWTH, _BACKOFF, _GROWTH_INTERVAL = 2.0 ** 16, 2.0, 0.5, 2000


def fused_losses(model, x: torch.Tensor, y: torch.Tensor, plan, *, batched_student: bool = True,
                 teacher_bn_stats: str = "exact") -> dict[str, torch.Tensor]:
    """Every loss term of one step, computed with the fused engine's savings (module docstring);
    the method's own arrangement (``model.fused_losses``: AdAutoMix's single teacher pass and
    batched student passes; the baselines' one pass)."""
    return model.fused_losses(x, y, plan, batched_student=batched_student, teacher_bn_stats=teacher_bn_stats)


# The fused step's choices (--student-passes, --teacher-bn-stats; module docstring).
STUDENT_PASSES = ("batched", "separate")
TEACHER_BN_STATS = ("exact", "single")

class FusedStep(TrainStep):
    """The fused train step of any method. Same call signature and state API as
    `reference.ReferenceStep`; the host-side bookkeeping is theirs (`trainstep.TrainStep`).

    A non-finite step changes nothing (``skips_nonfinite``; module docstring, 4.).

    Args:
        compile: torch.compile the step (``fullgraph=True``); False runs the same code eagerly
            (for debugging and for tests of the step's mathematics).
        mode: torch.compile mode; default ``"reduce-overhead"`` (CUDA graphs) on CUDA, the
            default mode on CPU.
        backend: torch.compile backend: "inductor" (default), or e.g. "aot_eager" to check that
            the step traces as one graph without generating code (fast; for tests and debugging).
        batched_student: one [3B] student pass with segmented BatchNorm (default) or three
            (methods with several student passes: AdAutoMix, AutoMix).
        teacher_bn_stats: "exact" (reference running statistics) or "single" (module docstring).
        max_grad_norm: clip the total L2 norm of every trained gradient to this, in the graph
            (``torch.nn.utils.clip_grad_norm_``'s rule; None: no clipping).
    """

    skips_nonfinite = True

    def __init__(self, model, optimizer: torch.optim.Optimizer, schedule, precision, *,
                 channels_last: bool = False, compile: bool = True, mode: Optional[str] = None,
                 backend: str = "inductor", batched_student: bool = True, teacher_bn_stats: str = "exact",
                 plan_generator: Optional[torch.Generator] = None, grad_sync=None,
                 max_grad_norm: Optional[float] = None):
        if teacher_bn_stats not in TEACHER_BN_STATS:
            raise ValueError(f"teacher_bn_stats must be 'exact' or 'single', got {teacher_bn_stats!r}")
        student, gen = model.trainable_parameters()
        trained = {id(p) for p in student + gen}
        in_optimizer = [id(p) for g in optimizer.param_groups for p in g["params"]]
        if len(in_optimizer) != len(trained) or set(in_optimizer) != trained:
            raise ValueError("FusedStep expects the optimizer of optim.build_optimizer (every student and "
                             "generator parameter exactly once, nothing else)")
        # The update of the graph: SGD or AdamW over the optimizer's groups (any number: the
        # weight-decay exclusions add no-decay groups), clipping, the exact non-finite skip.
        self.optim = InGraphOptimizer(optimizer, max_grad_norm)
        # The plan generator serves only methods whose plan is drawn outside the graph
        # (``plan_outside_graph``); inside the graph the default generator is graph-safe.
        super().__init__(model, optimizer, schedule, precision, channels_last=channels_last,
                         plan_generator=plan_generator)
        self.batched_student = batched_student
        self.teacher_bn_stats = teacher_bn_stats
        # Distributed: averages (gradients, loss) across ranks inside the graph
        # (adautomix_fast.runtime.distributed.make_graph_grad_sync); None for one process.
        self.grad_sync = grad_sync
        self.device = model.device
        if model.uses_segmented_bn:
            convert_batchnorm(model)
            others = unconverted_batchnorms(model)
            if others:
                raise UsageError(f"the fused step computes per-pass BatchNorm statistics for nn.BatchNorm2d and "
                                 f"timm's BatchNormAct2d; {others[0]} is a "
                                 f"{type(model.get_submodule(others[0])).__name__}: use --impl reference")
        dev = self.device
        f32 = dict(dtype=torch.float32, device=dev)
        # Device state, changed in place between steps (never recompiles or re-captures):
        # one learning rate per schedule (student, generator), shared by the groups that follow it.
        self.lrs = self.optim.lrs
        self.ema_momentum = torch.zeros((), dtype=MOMENTUM_DTYPE, device=dev)   # float64: 1 - m in double
        self.fp16 = precision.dtype is torch.float16
        self.loss_scale = torch.full((), _SCALE_INIT if self.fp16 else 1.0, **f32)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=dev)
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64, device=dev)
        self.compile = compile
        self.backend = backend
        # Inductor's modes (CUDA graphs with reduce-overhead); other backends take none.
        self.mode = (mode if mode is not None else ("reduce-overhead" if dev.type == "cuda" else None)) \
            if backend == "inductor" else None
        self._compiled = None
        self._batch_size = None
        # Recompilation tracking: graphs compiled during calls past the first two of each N (a
        # method that varies N per step gets one graph per N, and that is not a recompilation).
        self._calls_per_n: dict = {}
        self._late_graphs: Optional[int] = None
        # Said after a failure of the compiled step (the trainer names the checkpoint it keeps).
        self.failure_hint = ""

    # ------------------------------------------------------------------ state binding
    def _bind(self, batch_size: int) -> None:
        """Fix the batch size and collect the tensors the graph updates in place. Called on the
        first step (after a possible load_state_dict, which replaces optimizer tensors)."""
        model = self.model
        self._batch_size = batch_size
        set_segment_size(model, batch_size)
        # The optimizer's state tensors (created as torch would on its first step), its groups'
        # parameters in order (the gradients follow them) and its constant settings.
        self.optim.bind()
        self.groups = [params for params, _ in self.optim.groups]
        # SGD's momentum buffers per group (tests and debugging read them; AdamW: none).
        self.momentum_buffers = ([[t[0] for t in tensors] for tensors in self.optim.state]
                                 if self.optim.kind == "sgd" else [])
        self.bn_buffers = [b for norm in model.modules() if isinstance(norm, _BatchNorm) and norm.track_running_stats
                           for b in (norm.running_mean, norm.running_var, norm.num_batches_tracked)]
        self.ema_pairs = model.ema_pairs() if model.has_teacher else None
        if self.compile:
            torch._dynamo.config.trace_autograd_ops = True   # autograd.grad inside the graph
            if self.device.type == "cuda":
                for t in self._static_tensors():
                    torch._dynamo.mark_static_address(t)
            self._compiled = torch.compile(_own_code(self._step_graph), fullgraph=True, dynamic=False,
                                           mode=self.mode, backend=self.backend)
            fatal.set_message("error: " + self.failure_line("the process died in native code"))

    def failure_line(self, what: str) -> str:
        """One line for a failure of the compiled step: which step, which torch, the fallback."""
        how = self.backend + (f", mode {self.mode}" if self.mode else "")
        hint = f"; {self.failure_hint}" if self.failure_hint else ""
        return (f"the fused step (torch.compile, {how}) failed under torch {torch.__version__}: {what}; "
                f"rerun with --impl reference (the eager step){hint}")

    def _static_tensors(self):
        yield from (*self.lrs, self.ema_momentum, self.loss_scale, self.growth_tracker, self.nonfinite_steps)
        for name in self.model.schedule_values(0, 1):
            yield getattr(self.model, name)
        for t in self.optim.static_tensors():
            if not any(t is lr for lr in self.lrs):   # the lrs are yielded above
                yield t

    # ------------------------------------------------------------------ the step
    def _step_graph(self, x: torch.Tensor, y: torch.Tensor, plan, n: Optional[int] = None):
        model = self.model
        if plan is None:
            plan = model.sample_plan(x.shape[0], n=n, image_size=tuple(x.shape[-2:]))
        saved_bn = [b.clone() for b in self.bn_buffers]
        with self.precision.autocast():
            terms = fused_losses(model, x, y, plan, batched_student=self.batched_student,
                                 teacher_bn_stats=self.teacher_bn_stats)
        params = [p for group in self.groups for p in group]
        scaled = terms["loss"] * self.loss_scale if self.fp16 else terms["loss"]
        grads = list(torch.autograd.grad(scaled, params))
        loss = terms["loss"]
        if self.grad_sync is not None:
            # Averaged across ranks: every rank applies the same update and takes the same
            # decision for a non-finite step (the loss is averaged with the gradients).
            grads, loss = self.grad_sync(grads, loss)
        self._update(grads, loss, saved_bn)
        return {k: v.detach() for k, v in terms.items()}

    @torch.no_grad()
    def _update(self, grads: list[torch.Tensor], loss: torch.Tensor, saved_bn: list[torch.Tensor]) -> None:
        # Unscales in place (GradScaler's own kernel; the scale is 1 without fp16) and flags an
        # inf/NaN gradient or loss; the gradients come back sanitised, so a skipped step
        # multiplies zeros, never NaN * 0.
        ok, keep, grads = unscale_and_check_(grads, loss, self.loss_scale)
        # Clipping (total norm a device tensor, never read here), then SGD or AdamW per group;
        # keep = 0 leaves parameters and every optimizer state tensor as they were.
        self.optim.step(grads, ok, keep)
        if self.ema_pairs is not None:
            momentum = torch.where(ok, self.ema_momentum, 1.0)               # skipped: teacher kept
            ema, src = self.ema_pairs
            ema_update_(ema, src, momentum)
        for buf, old in zip(self.bn_buffers, saved_bn):                     # skipped: BN stats kept
            buf.copy_(torch.where(ok, buf, old))
        self.model.num_updates.add_(1)
        self.nonfinite_steps.add_((~ok).to(torch.int64))
        if self.fp16:
            grown = self.growth_tracker + 1
            grow = grown >= _GROWTH_INTERVAL
            self.loss_scale.copy_(torch.where(ok, torch.where(grow, self.loss_scale * _GROWTH, self.loss_scale),
                                              self.loss_scale * _BACKOFF))
            self.growth_tracker.copy_(torch.where(ok & ~grow, grown, torch.zeros_like(grown)))

    def set_lrs(self, lrs: tuple[float, float]) -> None:
        self.optim.set_lrs(lrs)   # the lr tensors, and every group's "lr" for checkpoints and logs

    def __call__(self, x: torch.Tensor, y: torch.Tensor, plan=None) -> dict[str, torch.Tensor]:
        model = self.model
        x = self.prepare(x)
        if self._batch_size is None:
            self._bind(x.shape[0])
        elif x.shape[0] != self._batch_size:
            raise ValueError(f"the fused step is built for batches of {self._batch_size}, got {x.shape[0]} "
                             "(training loaders drop the last incomplete batch)")
        settings = self.begin_step()
        n = settings.n
        if settings.momentum is not None:
            self.ema_momentum.fill_(settings.momentum)
        if plan is None and model.plan_outside_graph:
            # This method's plan needs work the graph cannot hold (e.g. OpenCV saliency on the host).
            plan = self.draw_plan(x, y, n)
        if self._compiled is None:
            out = self._step_graph(x, y, plan, n)
        else:
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            graphs_before = _unique_graphs()
            out = self._run_compiled(x, y, plan, n)
            calls = self._calls_per_n.get(n, 0)
            self._calls_per_n[n] = calls + 1
            if calls >= 2:
                self._late_graphs = (self._late_graphs or 0) + _unique_graphs() - graphs_before
            elif calls == 1 and self._late_graphs is None:
                self._late_graphs = 0
        # CUDA-graph outputs are overwritten by the next replay: keep copies.
        return self.end_step({k: v.clone() for k, v in out.items()}, settings)

    def _run_compiled(self, x, y, plan, n):
        """The compiled step; any failure becomes one line (``CompiledStepError``), and a death in
        native code writes that line first (``fatal``)."""
        with fatal.armed():
            try:
                return self._compiled(x, y, plan, n)
            except Exception as exc:
                first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
                detail = f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__
                raise CompiledStepError(self.failure_line(detail)) from exc

    def recompiles_after_warmup(self) -> Optional[int]:
        """Graphs compiled after the first two steps of each N (0 is the target); None before
        warm-up."""
        return self._late_graphs

    # ------------------------------------------------------------------ resumable state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "loss_scale": self.loss_scale.detach().cpu(),
                "growth_tracker": self.growth_tracker.detach().cpu(),
                "nonfinite_steps": self.nonfinite_steps.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for name in ("loss_scale", "growth_tracker", "nonfinite_steps"):
            if name in state:
                getattr(self, name).copy_(state[name])


def _own_code(method):
    """``method`` bound to a private copy of its code object.

    Dynamo keeps its compiled graphs, and counts recompilations against
    ``torch._dynamo.config.recompile_limit`` (8), per code object. Every FusedStep compiles
    ``_step_graph``; sharing one code object, the steps of one process (a benchmark of every
    method, a test suite) would pile their graphs into one cache, each new model type or batch
    shape a "recompilation", until the limit fails the next fullgraph compile, and graphs of
    dead steps would stay there (each call checking their guards first; on CUDA, their graphs
    holding memory). A copy per step gives each its own cache, freed with the step, holding one
    graph per N at most (random_mix_samples: 4), so the default limit is never reached and the
    global dynamo configuration is left alone.
    """
    fn = method.__func__
    code = fn.__code__.replace()          # an equal but distinct code object
    own = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    own.__kwdefaults__, own.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    return types.MethodType(own, method.__self__)


def _unique_graphs() -> int:
    # Lazy: importing dynamo costs seconds, and only a compiled step (which has loaded it) asks.
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


__all__ = ["FusedStep", "fused_losses", "SegmentedBatchNorm2d"]
