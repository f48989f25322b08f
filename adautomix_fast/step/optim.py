"""Optimizers, weight-decay groups and learning-rate schedules of the architecture recipes.

Two halves:

* **Host side**: ``param_groups`` / ``build_optimizer`` (SGD or AdamW over the student and the
  generator, with the released weight-decay exclusions); the learning rates they are given come
  from :mod:`.schedules`.
* **In-graph side**: the update math the fused step runs inside its compiled graph, written with
  ``torch._foreach_*`` ops on tensors only: no ``.item()``, no Python branch on a tensor value,
  learning rates as 0-dim device tensors changed in place between steps (``InGraphOptimizer.
  set_lrs``), so ``torch.compile`` never recompiles and a CUDA graph never re-captures when the
  learning rate changes. ``sgd_step_`` is the fused step's SGD (``fused.py`` ``_update``);
  ``adamw_step_`` equals ``torch.optim.AdamW`` and ``clip_grad_norm_`` equals
  ``torch.nn.utils.clip_grad_norm_`` (tests compare them step by step). Every state tensor
  (SGD ``momentum_buffer``; AdamW ``exp_avg``, ``exp_avg_sq``, ``step``) lives in the
  ``torch.optim`` object's own state, so the eager reference step and the fused step share
  checkpoints. A ``keep`` 0/1 tensor (with its bool twin ``ok``) turns a non-finite step into
  an exact no-op: parameters and every state tensor, AdamW's step count included, stay as they
  were.

Why hand-written: ``optimizer.step()`` cannot run inside the fused step's graph
(docs/compile.md, fact 1), and PyTorch's own foreach implementations take the learning rate as a
Python float (or, capturable, still branch on host values); these functions are their
tensor-only twins.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn

from ..models.specs import arch_spec

OPTIMIZERS = ("sgd", "adamw")


# ---------------------------------------------------------------------------- weight-decay groups
def no_weight_decay(name: str, param: torch.Tensor, names: Iterable[str] = ()) -> bool:
    """True for the parameters the transformer recipes do not decay: every norm weight and bias
    and every bias (all of them are 1-D: timm's ``param_groups_weight_decay`` rule) and position
    or relative-position tables, class tokens and layer scales named in ``names`` (the released
    configs' ``paramwise_options``; see ``ARCH_SPECS[arch].no_decay``)."""
    if param.ndim <= 1 or name.endswith(".bias"):
        return True
    return any(part in name for part in names)


def _named(model: nn.Module, params: Sequence[nn.Parameter]) -> list[tuple[str, nn.Parameter]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(p)], p) for p in params]


def param_groups(model: nn.Module, cfg) -> list[dict]:
    """Parameter groups over ``model.trainable_parameters()`` (student, generator), in this order:

        student, generator, student_no_decay, generator_no_decay

    Without exclusions (``cfg.wd_exclude`` False; the default with SGD): the first two only,
    exactly the groups the engine had before the recipes (the golden SGD steps rely on it). With
    them (the default with AdamW): the same two groups with every decayed parameter, then the
    two no-decay groups (weight decay 0). Empty groups are left out: a method without a generator
    (the baselines) has no generator groups. Each group has ``name`` and ``role`` ("student" or
    "generator": the schedule's learning rate it follows; ``group_role``).
    """
    student, generator = model.trainable_parameters()
    exclude = wd_exclude(cfg)
    extra = arch_spec(cfg.arch).no_decay
    gen_lr = cfg.gen_lr if cfg.gen_lr is not None else cfg.lr
    groups: list[dict] = []
    no_decay: list[dict] = []
    for role, params, lr in (("student", student, cfg.lr), ("generator", generator, gen_lr)):
        if not params:
            continue
        named = _named(model, params)
        skip = [p for n, p in named if exclude and no_weight_decay(n, p, extra)]
        skip_ids = {id(p) for p in skip}
        keep = [p for _, p in named if id(p) not in skip_ids]
        if keep:
            groups.append({"params": keep, "lr": lr, "weight_decay": cfg.weight_decay, "name": role, "role": role})
        if skip:
            no_decay.append({"params": skip, "lr": lr, "weight_decay": 0.0, "name": f"{role}_no_decay",
                             "role": role})
    return groups + no_decay


def group_role(group: dict) -> str:
    """The schedule a parameter group follows: its ``role``; for groups saved before roles existed
    (checkpoints of the SGD engine: ``name`` "student" / "generator") its name; else "student"."""
    role = group.get("role") or group.get("name") or "student"
    return "generator" if str(role).startswith("generator") else "student"


def set_group_lrs(optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
    """(student lr, generator lr) -> every group's ``lr`` by its role (``lrs[0]`` when the
    generator's is absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lrs[1] if group_role(group) == "generator" and len(lrs) > 1 else lrs[0]


def wd_exclude(cfg) -> bool:
    """Whether norms, biases and position tables skip weight decay: ``cfg.wd_exclude``, or by
    default on with AdamW (the released transformer configs) and off with SGD (the released
    ResNet configs decay every parameter)."""
    if cfg.wd_exclude is not None:
        return bool(cfg.wd_exclude)
    return cfg.optimizer == "adamw"


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The run's optimizer over the student and the generator: SGD (momentum ``cfg.momentum``,
    the released ResNet recipes) or AdamW (``cfg.adam_beta1/2``, ``cfg.adam_eps``; the
    transformer and ConvNeXt recipes). The in-graph twins support exactly these options (no
    nesterov, dampening, amsgrad or maximize). Parameter groups (``param_groups``), in order:

        0 student, 1 generator, 2 student_no_decay, 3 generator_no_decay

    Groups 2-3 exist only with weight-decay exclusions (``cfg.wd_exclude``; default on with
    AdamW): norms, biases, position tables and layer scales get weight decay 0. The generator
    groups exist only for methods with a generator, and follow the generator's own learning rate
    and schedule when ``cfg.gen_lr`` is set (otherwise the student's). Every group carries its
    ``role`` ("student" / "generator"), which ``set_group_lrs`` and the fused step follow.
    """
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)


# ---------------------------------------------------------------------------- in-graph pieces
@torch.no_grad()
def unscale_and_check_(grads: list[torch.Tensor], loss: torch.Tensor, loss_scale: Optional[torch.Tensor] = None):
    """Unscale ``grads`` in place (when a loss scale is given) and flag a non-finite step.

    Returns ``(ok, keep, grads)``: ``ok`` a 0-dim bool (every gradient and the loss finite),
    ``keep`` its float32 0/1 twin, ``grads`` with inf/NaN replaced by 0 (so a skipped step
    multiplies zeros, never NaN * 0). GradScaler's own kernel does the check.
    """
    found_inf = torch.zeros(1, dtype=torch.float32, device=loss.device)
    inv_scale = torch.ones(1, dtype=torch.float32, device=loss.device) if loss_scale is None \
        else (1.0 / loss_scale).reshape(1)
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
    ok = (found_inf[0] == 0) & torch.isfinite(loss)
    grads = [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
    return ok, ok.to(torch.float32), grads


@torch.no_grad()
def clip_grad_norm_(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (L2, foreach) on a list of gradients, in graph.

    total = ||(||g_1||, ..., ||g_n||)||_2; every g *= min(max_norm / (total + 1e-6), 1). Returns
    the total norm as a 0-dim device tensor (never read on the host here)."""
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef)
    return total


@torch.no_grad()
def sgd_step_(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor], lr: torch.Tensor, *,
              momentum: float, weight_decay: float, ok: torch.Tensor, keep: torch.Tensor) -> None:
    """torch.optim.SGD (momentum, no dampening, no nesterov), skipped exactly when ``keep`` is 0.

    d = g + wd * p; buf = mu * buf + d; p -= lr * buf. Buffers start at zero, which gives
    SGD's first step (buf = d). ``grads`` are overwritten."""
    if weight_decay:
        torch._foreach_add_(grads, params, alpha=weight_decay)          # d = g + wd * p
    torch._foreach_mul_(grads, keep)                                    # skipped: d = 0
    mu = torch.where(ok, momentum, 1.0)                                 # skipped: buffer kept
    torch._foreach_mul_(bufs, mu)
    torch._foreach_add_(bufs, grads)                                    # buf = mu * buf + d
    torch._foreach_sub_(params, torch._foreach_mul(bufs, lr * keep))    # p -= lr * buf


@torch.no_grad()
def adamw_step_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lr: torch.Tensor, *, beta1: float,
                beta2: float, eps: float, weight_decay: float, ok: torch.Tensor, keep: torch.Tensor) -> None:
    """torch.optim.AdamW (amsgrad off), with every value a tensor, skipped exactly when ``keep`` is 0.

        step += 1;  p *= 1 - lr * wd
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g^2
        p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)

    ``steps`` are the per-parameter 0-dim float32 step counts of torch's AdamW state (on the
    parameters' device). Skipped step: the betas become 1 (moments unchanged, bit for bit), the
    step count and the learning rate are multiplied by ``keep`` (nothing moves). The bias
    corrections use max(step, 1) so that a skipped *first* step computes 0 * finite, not 0/0.
    """
    n = len(params)
    torch._foreach_add_(steps, keep)
    if weight_decay:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay * keep)
    b1 = torch.where(ok, beta1, 1.0)
    b2 = torch.where(ok, beta2, 1.0)
    torch._foreach_lerp_(exp_avgs, grads, [1.0 - b1] * n)
    torch._foreach_mul_(exp_avg_sqs, b2)
    sq = torch._foreach_mul(grads, grads)
    torch._foreach_mul_(sq, 1.0 - b2)
    torch._foreach_add_(exp_avg_sqs, sq)
    s = torch._foreach_maximum(steps, 1.0)
    bc1 = torch._foreach_pow(beta1, s)                   # beta1^step
    bc2 = torch._foreach_pow(beta2, s)
    neg_step_size = torch._foreach_mul(torch._foreach_reciprocal(torch._foreach_sub(bc1, 1.0)), lr * keep)
    bc2_sqrt = torch._foreach_sqrt(torch._foreach_sub(torch._foreach_neg(bc2), -1.0))   # sqrt(1 - beta2^step)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, neg_step_size)           # -lr / (1 - beta1^step) * m / denom
    torch._foreach_add_(params, update)


class InGraphOptimizer:
    """The in-graph twin of a ``torch.optim.SGD`` or ``torch.optim.AdamW`` (any number of groups).

    Host side, between steps: ``set_lrs((student_lr, generator_lr))`` writes the 0-dim
    learning-rate tensors ``lrs`` (one per schedule: ``lrs[0]`` the student's, ``lrs[1]`` the
    generator's when a group follows it) and every group's ``lr`` by its role (``group_role``),
    for checkpoints and logs. Groups of one role share their tensor, so the no-decay groups follow
    their role's schedule with nothing more to write. In the graph: ``step(grads, ok, keep)``
    clips (``max_grad_norm``) and updates; ``grads`` follow ``params()`` (the groups' parameters,
    in order). ``bind()`` collects the state tensors from the optimizer's state (creating the
    missing ones as torch would) and snapshots the groups' constant settings (momentum, weight
    decay, betas, eps); call it after any ``optimizer.load_state_dict`` and before compiling.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_grad_norm: Optional[float] = None):
        if isinstance(optimizer, torch.optim.AdamW):
            self.kind = "adamw"
            for g in optimizer.param_groups:
                if g.get("amsgrad") or g.get("maximize"):
                    raise ValueError("InGraphOptimizer: AdamW with amsgrad or maximize is not supported")
        elif isinstance(optimizer, torch.optim.SGD):
            self.kind = "sgd"
            for g in optimizer.param_groups:
                if g.get("nesterov") or g.get("dampening") or g.get("maximize"):
                    raise ValueError("InGraphOptimizer: SGD with nesterov, dampening or maximize is not supported")
        else:
            raise TypeError(f"InGraphOptimizer supports torch.optim.SGD and AdamW, got {type(optimizer).__name__}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        first = next(p for g in optimizer.param_groups for p in g["params"])
        self.device = first.device
        roles = [group_role(g) for g in optimizer.param_groups]
        self.roles = ["student", "generator"] if "generator" in roles else ["student"]
        initial = {r: next((float(g["lr"]) for g, gr in zip(optimizer.param_groups, roles) if gr == r), 0.0)
                   for r in self.roles}
        self.lrs = [torch.full((), initial[r], dtype=torch.float32, device=self.device) for r in self.roles]
        self.bound = False

    def params(self) -> list[torch.Tensor]:
        """Every group's parameters, in order (the order ``step`` expects the gradients in)."""
        if self.bound:
            return self._params
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def set_lrs(self, lrs: Sequence[float]) -> None:
        """(student lr, generator lr) -> the role tensors and every group's ``lr``. In place: a
        compiled graph or CUDA graph reads the new values."""
        for i, t in enumerate(self.lrs):
            t.fill_(lrs[i] if i < len(lrs) else lrs[0])
        set_group_lrs(self.optimizer, lrs)

    def bind(self) -> None:
        opt = self.optimizer
        self.state = []
        # The graph reads these snapshots, never ``optimizer.param_groups``: dynamo would guard
        # on those dicts, whose "lr" entries change every step (a recompilation per step).
        self.groups = []
        # Each group reads its role's lr tensor (recomputed here: a loaded state dict brings the
        # saved groups, roles included).
        self._group_lr = []
        for group in opt.param_groups:
            hyper = {k: group[k] for k in ("momentum", "weight_decay", "betas", "eps") if k in group}
            self.groups.append((list(group["params"]), hyper))
            self._group_lr.append(self.roles.index(group_role(group)) if group_role(group) in self.roles else 0)
        self._params = [p for params, _ in self.groups for p in params]
        for group in opt.param_groups:
            tensors = []
            for p in group["params"]:
                st = opt.state[p]
                if self.kind == "sgd":
                    if st.get("momentum_buffer") is None:
                        st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    tensors.append((st["momentum_buffer"],))
                else:
                    if "step" not in st:
                        st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    # torch keeps the step on the CPU unless capturable; in a graph it must be
                    # on the parameters' device (torch's eager AdamW reads either).
                    if st["step"].device != p.device or st["step"].dtype != torch.float32:
                        st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
                    tensors.append((st["exp_avg"], st["exp_avg_sq"], st["step"]))
            self.state.append(tensors)
        self.bound = True

    def static_tensors(self) -> list[torch.Tensor]:
        """Every tensor the graph updates in place (for ``torch._dynamo.mark_static_address``)."""
        out = list(self.lrs)
        for tensors in self.state:
            for t in tensors:
                out.extend(t)
        return out

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], ok: torch.Tensor, keep: torch.Tensor) -> Optional[torch.Tensor]:
        """Clip (when ``max_grad_norm``) and update every group; returns the total gradient norm
        (0-dim tensor) when clipping, else None. ``grads`` (sanitised: finite) are consumed."""
        if not self.bound:
            raise RuntimeError("InGraphOptimizer.bind() must run before step()")
        total = clip_grad_norm_(grads, self.max_grad_norm) if self.max_grad_norm is not None else None
        offset = 0
        for (params, group), lr_index, tensors in zip(self.groups, self._group_lr, self.state):
            lr = self.lrs[lr_index]
            g = grads[offset:offset + len(params)]
            offset += len(params)
            if not params:
                continue
            if self.kind == "sgd":
                sgd_step_(params, g, [t[0] for t in tensors], lr, momentum=group["momentum"],
                          weight_decay=group["weight_decay"], ok=ok, keep=keep)
            else:
                beta1, beta2 = group["betas"]
                adamw_step_(params, g, [t[0] for t in tensors], [t[1] for t in tensors], [t[2] for t in tensors], lr,
                            beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                            weight_decay=group["weight_decay"], ok=ok, keep=keep)
        return total


__all__ = [
    "OPTIMIZERS", "no_weight_decay", "param_groups", "wd_exclude", "build_optimizer",
    "group_role", "set_group_lrs", "unscale_and_check_", "clip_grad_norm_", "sgd_step_",
    "adamw_step_", "InGraphOptimizer",
]
