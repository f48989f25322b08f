"""In-graph optimizers, clipping, weight-decay groups and the warm-up schedule."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adautomix_fast import AdAutoMix
from adautomix_fast.config import Config, resolve
from adautomix_fast.errors import UsageError
from adautomix_fast.models import default_cifar_stem
from adautomix_fast.registry import build_model
from adautomix_fast.step.base import make_plan_generator
from adautomix_fast.step.fused import FusedStep
from adautomix_fast.step.optim import (
    InGraphOptimizer,
    build_optimizer,
    clip_grad_norm_,
    group_role,
    no_weight_decay,
    set_group_lrs as set_lrs,
    unscale_and_check_,
)
from adautomix_fast.step.precision import Precision
from adautomix_fast.step.reference import ReferenceStep
from adautomix_fast.step.schedules import Schedule, warmup_cosine_lr


class Net(nn.Module):
    """A small model with every kind of parameter the recipes treat differently."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 16, 6))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = self.conv(x).flatten(2).transpose(1, 2) + self.pos_embed       # [B, 16, 6]
        return self.fc(self.norm(h).mean(1))


def groups(model):
    decay = [model.conv.weight, model.fc.weight]
    rest = [model.conv.bias, model.norm.weight, model.norm.bias, model.pos_embed, model.fc.bias]
    return [{"params": decay, "weight_decay": 0.05, "role": "student"},
            {"params": rest[:2], "weight_decay": 0.0, "role": "generator"},
            {"params": rest[2:], "weight_decay": 0.0, "role": "student"}]


def data(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(4, 3, 4, 4, generator=g), torch.randint(0, 4, (4,), generator=g)


def lrs_of(step):
    return (1e-2 * (1 + step) / 3, 3e-3 * (2 + math.cos(step)))     # both change every step


def reference_steps(model, kind, steps, max_norm):
    opt = (torch.optim.AdamW(groups(model), lr=1e-3, betas=(0.9, 0.99), eps=1e-8) if kind == "adamw"
           else torch.optim.SGD(groups(model), lr=1e-3, momentum=0.9))
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lrs_of(step)[0 if g["role"] == "student" else 1]
        x, y = data(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
    return opt


def in_graph(model, kind, max_norm):
    opt = (torch.optim.AdamW(groups(model), lr=1e-3, betas=(0.9, 0.99), eps=1e-8) if kind == "adamw"
           else torch.optim.SGD(groups(model), lr=1e-3, momentum=0.9))
    ig = InGraphOptimizer(opt, max_grad_norm=max_norm)
    ig.bind()

    def step_fn(x, y):
        loss = F.cross_entropy(model(x), y)
        grads = list(torch.autograd.grad(loss, ig.params()))
        ok, keep, grads = unscale_and_check_(grads, loss.detach())
        ig.step(grads, ok, keep)
        return loss.detach()
    return ig, step_fn


def assert_same(model_a, model_b, opt_a, opt_b, atol=1e-6, rtol=1e-5):
    for (n, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
        torch.testing.assert_close(b, a, atol=atol, rtol=rtol, msg=n)
    for pa, pb in zip([p for g in opt_a.param_groups for p in g["params"]],
                      [p for g in opt_b.param_groups for p in g["params"]]):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert set(sa) == set(sb)
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], atol=atol, rtol=rtol, msg=k)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
@pytest.mark.parametrize("max_norm", [None, 0.05])
def test_eager_in_graph_steps_equal_torch(kind, max_norm):
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    opt_a = reference_steps(a, kind, 5, max_norm)
    ig, step_fn = in_graph(b, kind, max_norm)
    for step in range(5):
        ig.set_lrs(lrs_of(step))
        step_fn(*data(step))
    assert_same(a, b, opt_a, ig.optimizer)
    assert [g["lr"] for g in ig.optimizer.param_groups] == [g["lr"] for g in opt_a.param_groups]


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_state_is_shared_with_the_torch_optimizer(kind):
    """Two eager torch steps, then two in-graph steps on the same optimizer object (its state
    dict through a save/load in between) equal four torch steps: checkpoints interchange."""
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    opt_a = reference_steps(a, kind, 4, 0.05)
    opt_b = reference_steps(b, kind, 2, 0.05)
    saved = copy.deepcopy(opt_b.state_dict())
    fresh = (torch.optim.AdamW(groups(b), lr=1e-3, betas=(0.9, 0.99), eps=1e-8) if kind == "adamw"
             else torch.optim.SGD(groups(b), lr=1e-3, momentum=0.9))
    fresh.load_state_dict(saved)
    ig = InGraphOptimizer(fresh, max_grad_norm=0.05)
    ig.bind()
    for step in (2, 3):
        ig.set_lrs(lrs_of(step))
        x, y = data(step)
        loss = F.cross_entropy(b(x), y)
        grads = list(torch.autograd.grad(loss, ig.params()))
        ok, keep, grads = unscale_and_check_(grads, loss.detach())
        ig.step(grads, ok, keep)
    assert_same(a, b, opt_a, fresh)


@pytest.mark.slow
def test_compiled_adamw_clip_equals_torch_without_recompiling():
    from torch._dynamo.utils import counters
    torch._dynamo.config.trace_autograd_ops = True      # autograd.grad inside the graph, as fused.py
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    opt_a = reference_steps(a, "adamw", 6, 0.05)
    ig, step_fn = in_graph(b, "adamw", 0.05)
    compiled = torch.compile(step_fn, fullgraph=True, dynamic=False)
    graphs = []
    for step in range(6):
        ig.set_lrs(lrs_of(step))
        compiled(*data(step))
        graphs.append(int(counters["stats"]["unique_graphs"]))
    assert graphs[-1] == graphs[1], f"recompiled after warm-up: {graphs}"
    assert_same(a, b, opt_a, ig.optimizer, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
@pytest.mark.parametrize("first", [True, False])
def test_nonfinite_step_is_an_exact_no_op(kind, first):
    torch.manual_seed(0)
    model = Net()
    ig, step_fn = in_graph(model, kind, 1.0)
    if not first:
        ig.set_lrs((1e-2, 1e-2))
        step_fn(*data(0))
    params = [p.detach().clone() for p in ig.params()]
    state = {id(p): {k: v.clone() for k, v in ig.optimizer.state[p].items()} for p in ig.params()}
    grads = [torch.randn_like(p) for p in ig.params()]
    grads[2][0] = float("nan")
    ok, keep, grads = unscale_and_check_(grads, torch.tensor(1.0))
    assert not bool(ok) and float(keep) == 0.0 and all(torch.isfinite(g).all() for g in grads)
    ig.set_lrs((1e-2, 1e-2))
    ig.step(grads, ok, keep)
    for p, before in zip(ig.params(), params):
        assert torch.equal(p, before)
        for k, v in ig.optimizer.state[p].items():
            assert torch.equal(v, state[id(p)][k]), k
    # a non-finite loss alone is enough to skip
    ok, _, _ = unscale_and_check_([torch.ones(2)], torch.tensor(float("inf")))
    assert not bool(ok)


def test_clip_returns_torch_total_norm_and_scales_like_torch():
    torch.manual_seed(0)
    grads = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    expected = torch.nn.utils.clip_grad_norm_(params, 0.5)
    mine = [g.clone() for g in grads]
    total = clip_grad_norm_(mine, 0.5)
    assert torch.equal(total, expected)
    for p, g in zip(params, mine):
        assert torch.equal(g, p.grad)
    small = [g * 1e-3 for g in grads]
    copies = [g.clone() for g in small]
    clip_grad_norm_(copies, 0.5)                               # below the norm: unchanged
    for a, b in zip(small, copies):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- weight decay
@pytest.mark.parametrize("arch,no_decay_named", [
    ("tiny_swin", "relative_position_bias_table"),
    ("tiny_deit", "pos_embed"),
    ("tiny_convnext", "layer_scale"),
])
def test_weight_decay_exclusions(arch, no_decay_named):
    cfg = resolve(dict(dataset="cifar100", arch=arch, optimizer="adamw", weight_decay=0.05, gen_lr=1e-3,
                       img_size=32, cifar_stem=(arch == "tiny_convnext"), train_crop="rrc"))
    model = AdAutoMix(arch, 5, cifar_stem=cfg.cifar_stem, mix_samples=3, lam_concat=True, upsample="nearest")
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: [names[id(p)] for p in g["params"]] for g in opt.param_groups}
    assert list(by_group) == ["student", "generator", "student_no_decay", "generator_no_decay"]
    decayed = by_group["student"] + by_group["generator"]
    skipped = by_group["student_no_decay"] + by_group["generator_no_decay"]
    # every trainable parameter exactly once; the teacher never
    assert sorted(decayed + skipped) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert not any(n.startswith("teacher.") for n in decayed + skipped)
    for n in skipped:
        assert n.endswith(".bias") or "norm" in n or no_decay_named in n or n.endswith("cls_token") \
            or n.endswith(".weight") and dict(model.named_parameters())[n].ndim == 1, n
    assert any(no_decay_named in n for n in skipped)
    for n in decayed:
        p = dict(model.named_parameters())[n]
        assert p.ndim > 1 and no_decay_named not in n, n
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {
        "student": 0.05, "generator": 0.05, "student_no_decay": 0.0, "generator_no_decay": 0.0}
    assert {g["name"]: g["lr"] for g in opt.param_groups}["generator_no_decay"] == 1e-3


def test_sgd_recipe_keeps_the_engine_groups():
    """Without weight-decay exclusions SGD has the two groups of the released recipe: the
    student's and the generator's parameters, every one at the config's lr, decay and momentum."""
    cfg = resolve(dict(dataset="digits", arch="tiny"))
    model = AdAutoMix("tiny", 5, cifar_stem=True)
    opt = build_optimizer(model, cfg)
    student, generator = model.trainable_parameters()
    assert type(opt) is torch.optim.SGD
    assert [g["name"] for g in opt.param_groups] == ["student", "generator"]
    assert [g["params"] for g in opt.param_groups] == [student, generator]
    assert [(g["lr"], g["weight_decay"], g["momentum"]) for g in opt.param_groups] == \
        [(cfg.lr, cfg.weight_decay, cfg.momentum)] * 2
    assert no_weight_decay("x.weight", torch.zeros(3)) and not no_weight_decay("x.weight", torch.zeros(3, 3))


# ---------------------------------------------------------------------------- schedule
def mmcv_lr(step, total, base, final, warmup, ratio):
    """mmcv CosineAnnealingLrUpdaterHook(by_epoch=False) with warmup='linear', written out."""
    regular = final + (base - final) * (1 + math.cos(math.pi * step / total)) / 2
    if step < warmup:
        k = (1 - step / warmup) * (1 - ratio)
        return regular * (1 - k)
    return regular


def test_warmup_cosine_follows_mmcv_and_joins_continuously():
    total, warmup = 1000, 200
    for step in (0, 1, 57, 199, 200, 201, 640, 999):
        assert warmup_cosine_lr(step, total, 5e-4, 1e-4, warmup, 1e-5) == pytest.approx(
            mmcv_lr(step, total, 5e-4, 1e-4, warmup, 1e-5), rel=1e-12)
    assert warmup_cosine_lr(0, total, 5e-4, 1e-4, warmup, 1e-5) == pytest.approx(5e-9, rel=1e-6)
    jump = abs(warmup_cosine_lr(200, total, 5e-4, 1e-4, warmup, 1e-5)
               - warmup_cosine_lr(199, total, 5e-4, 1e-4, warmup, 1e-5))
    assert jump < 5e-4 / warmup * 1.01


def test_schedule_uses_the_config_and_equals_engine_without_warmup():
    cfg = resolve({}, "cifar100-swin_t")
    sched = Schedule(cfg, steps_per_epoch=500)
    assert sched.warmup_steps == 20 * 500 and sched.total_steps == 200 * 500
    s0, g0 = sched.lrs(0)
    assert s0 == pytest.approx(5e-4 * 1e-5) and g0 == pytest.approx(1e-3 * 1e-5)
    assert sched.lrs(sched.total_steps - 1)[0] == pytest.approx(1e-4, rel=1e-3)
    assert sched.lrs(10_000)[1] == pytest.approx(1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * 0.1)) / 2)
    for step in (0, 1, 4_321, 9_999, 10_000, 54_321):            # mmcv's formula, per step
        assert sched.lrs(step)[0] == pytest.approx(mmcv_lr(step, sched.total_steps, 5e-4, 1e-4, 10_000, 1e-5),
                                                   rel=1e-12)
        assert sched.lrs(step) == (warmup_cosine_lr(step, sched.total_steps, 5e-4, 1e-4, 10_000, 1e-5),
                                   warmup_cosine_lr(step, sched.total_steps, 1e-3, 1e-4, 10_000, 1e-5))
    # without warm-up: the released per-epoch cosine, the same floats as the pure function's
    plain = resolve(dict(dataset="cifar100", epochs=7))
    sched = Schedule(plain, 9)
    assert sched.warmup_steps == 0
    for step in range(0, 63, 5):
        lr = warmup_cosine_lr(step, 63, plain.lr, plain.min_lr, steps_per_epoch=9)
        assert sched.lrs(step) == (lr, lr)
        assert sched.lrs(step)[0] == sched.lrs(step - step % 9)[0]  # constant within an epoch


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "lamb", "--opt must be one of sgd, adamw"),
    ("clip_grad", 0.0, "--clip-grad must be a positive norm"),
    ("warmup_epochs", 500.0, "--warmup-epochs must be between 0 and --epochs"),
    ("warmup_ratio", 0.0, "--warmup-ratio must be in"),
    ("drop_path", 1.5, "--drop-path must be in"),
    ("randaugment", "rand-x7", "unknown part 'x7'"),
    ("train_crop", "centre", "--train-crop must be one of"),
    ("crop_scale", 0.0, "--crop-scale must be in"),
    ("interpolation", "lanczos", "--interpolation must be one of"),
    ("adam_beta2", 1.0, "--adam-beta2 must be in"),
])
def test_recipe_fields_are_validated_in_one_line(field, value, message):
    with pytest.raises(UsageError, match=message) as e:
        resolve({field: value}, "cifar100-swin_t")
    assert "\n" not in str(e.value)


def test_recipe_config_checks_arch_stem_and_size():
    with pytest.raises(UsageError, match="applies to the Swin, ConvNeXt and DeiT"):
        resolve(dict(arch="r18", drop_path=0.1))
    with pytest.raises(UsageError, match="deit_s takes 224 px images only"):
        resolve(dict(dataset="cifar100", arch="deit_s"))
    with pytest.raises(UsageError, match="swin_t has no CIFAR stem"):
        resolve(dict(dataset="cifar100", arch="swin_t", img_size=224, cifar_stem=True))
    cfg = resolve({}, "cifar100-swin_t")
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert "clip_grad" in cfg.identity() and "pretrained" not in cfg.identity()


def test_presets_carry_the_published_settings():
    swin, conv, deit = (resolve({}, p) for p in ("cifar100-swin_t", "cifar100-convnext_t", "cifar100-deit_s"))
    assert (swin.optimizer, swin.lr, swin.gen_lr, swin.min_lr, swin.weight_decay, swin.clip_grad) == \
        ("adamw", 5e-4, 1e-3, 1e-4, 0.05, 10.0)
    assert (swin.upsample, swin.lam_concat, swin.img_size, swin.drop_path, swin.warmup_epochs) == \
        ("nearest", True, 224, 0.2, 20)
    assert (conv.img_size, conv.cifar_stem, conv.lr, conv.gen_lr, conv.clip_grad, conv.train_crop) == \
        (32, True, 2e-3, 5e-4, None, "pad-reflect")
    assert (deit.warmup_epochs, deit.drop_path, deit.batch_size, deit.epochs) == (5, 0.1, 100, 200)
    fg = {p: resolve({}, p) for p in ("cub-r18", "cub-r50", "aircraft-r18", "aircraft-rx50", "cars-r18",
                                       "cars-rx50", "cub-r50-transfer", "cars-r50-transfer")}
    assert [c.beta for c in fg.values()] == [0.3, 0.1, 0.3, 0.6, 0.5, 0.3, 0.1, 0.1]
    for c in fg.values():
        assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size, c.gen_lr, c.gen_min_lr) == \
            ("sgd", 1e-3, 0.9, 5e-4, 16, 0.1, 1e-3)
        assert c.pretrained == "imagenet" and c.lam_concat and c.upsample == "bilinear"
    assert fg["aircraft-r18"].min_lr == 5e-4 and fg["aircraft-r18"].lam_margin == 0.0
    assert fg["cub-r50-transfer"].epochs == 100 and fg["cub-r18"].epochs == 200


# ---------------------------------------------------------------------------- the engine's optimizer
def test_engine_groups_follow_roles_in_a_stable_order():
    """Student, generator, then the no-decay groups; baselines have no generator group; set_lrs
    follows the roles (also for groups saved before roles existed)."""
    cfg = resolve(dict(dataset="digits", arch="tiny", optimizer="adamw", weight_decay=0.05, gen_lr=0.02))
    torch.manual_seed(0)
    model = AdAutoMix.from_config(cfg, 5, cifar_stem=True)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    assert [g["name"] for g in opt.param_groups] == ["student", "generator", "student_no_decay", "generator_no_decay"]
    set_lrs(opt, (0.1, 0.2))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2, 0.1, 0.2]
    baseline = build_model(resolve(dict(cfg.to_dict(), method="mixup", preset=None)), 5, True)
    opt = build_optimizer(baseline, cfg)
    assert [g["name"] for g in opt.param_groups] == ["student", "student_no_decay"]
    sgd = build_optimizer(model, resolve(dict(dataset="digits", arch="tiny")))
    assert [g["name"] for g in sgd.param_groups] == ["student", "generator"]
    assert isinstance(sgd, torch.optim.SGD)
    # a checkpoint of the SGD engine before roles: groups named, without "role"
    old = [{"name": "student"}, {"name": "generator"}, {}]
    assert [group_role(g) for g in old] == ["student", "generator", "student"]


def test_reference_step_clips_the_total_norm_of_every_trained_gradient():
    """SGD, no weight decay, first step: p0 - p1 = lr * g, so the update's total norm over the
    student and the generator is the clipping norm when clipping, above it without."""
    def update_norm(clip):
        cfg = resolve(dict(dataset="digits", arch="tiny", batch_size=6, epochs=1, amp=False, weight_decay=0.0,
                           lr=0.1, clip_grad=clip))
        torch.manual_seed(0)
        model = AdAutoMix.from_config(cfg, 5, cifar_stem=True)
        step = ReferenceStep(model, build_optimizer(model, cfg), Schedule(cfg, 4),
                             Precision.from_config(cfg, torch.device("cpu")), max_grad_norm=cfg.clip_grad,
                             plan_generator=make_plan_generator(torch.device("cpu"), 0))
        params = [p for g in step.optimizer.param_groups for p in g["params"]]
        before = [p.detach().clone() for p in params]
        x, y = batch6()
        lr = step.schedule.lrs(0)[0]
        step(x, y)
        deltas = [(b - p.detach()) / lr for b, p in zip(before, params)]
        assert any(d.abs().sum() > 0 for d in deltas[-4:])                 # the generator moved too
        return float(torch.linalg.vector_norm(torch.stack([d.norm() for d in deltas])))
    unclipped = update_norm(None)
    assert unclipped > 0.05
    assert update_norm(0.01) == pytest.approx(0.01, rel=1e-4)


def batch6(seed=0, b=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 16, 16, generator=g), torch.randint(0, 5, (b,), generator=g)


# AdamW's first updates are lr * g / (|g| + eps): with the released eps 1e-8, a gradient entry
# within float noise of zero (the generator's, early on) becomes a full +-lr step whose sign is
# that noise, so two correct implementations that sum in another order part by ~lr. A larger eps
# keeps the update linear in such entries; AdamW itself is compared with eps 1e-8 above.
ADAM_EPS = 1e-3


def recipe_steps(compile, backend="aot_eager", arch="tiny_convnext"):
    """A ReferenceStep and a FusedStep of the same AdAutoMix model with the transformer recipe's
    optimisation: AdamW with the four weight-decay groups, clipping that binds, a per-step warm-up
    then cosine (the lr changes every step), separate generator lr.

    The recipes' own trunks: their LayerNorms make the fused arrangement (one teacher pass for the
    cosine sources, batched student passes) exact up to float rounding. The tiny ResNet's 2x2
    layer-4 BatchNorm maps are ill-conditioned for some plans (a 2e-7 input change moves the
    teacher's input gradient by 9%), which AdamW would carry into the weights; its SGD steps are
    tests/test_fused.py's."""
    cfg = resolve(dict(dataset="digits", arch=arch, batch_size=12, epochs=2, amp=False, optimizer="adamw",
                       weight_decay=0.05, lr=2e-3, gen_lr=4e-3, min_lr=1e-4, gen_min_lr=1e-4, lr_per_step=True,
                       warmup_epochs=1, clip_grad=0.5, drop_path=0.0, adam_eps=ADAM_EPS))
    torch.manual_seed(0)
    ref_model = build_model(cfg, 5, default_cifar_stem(16, arch))
    fused_model = copy.deepcopy(ref_model)
    schedule = Schedule(cfg, steps_per_epoch=3)
    precision = Precision.from_config(cfg, torch.device("cpu"))
    ref = ReferenceStep(ref_model, build_optimizer(ref_model, cfg), schedule, precision,
                        max_grad_norm=cfg.clip_grad)
    fused = FusedStep(fused_model, build_optimizer(fused_model, cfg), schedule, precision, compile=compile,
                      backend=backend, max_grad_norm=cfg.clip_grad)
    return ref, fused


def assert_steps_agree(ref, fused, steps):
    x, y = batch6(b=12)
    lrs = []
    for i in range(steps):
        plan = ref.model.sample_plan(12, generator=torch.Generator().manual_seed(30 + i))
        a, b = ref(x, y, plan), fused(x, y, plan)
        lrs.append(float(a["lr"]))
        for k in ("loss", "loss_amce", "loss_re", "loss_gen", "loss_k", "cos", "lr", "lr_gen"):
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-5, msg=f"step {i} {k}")
    assert len(set(lrs)) == steps                                # warm-up and cosine: a new lr every step
    for (k, va), (_, vb) in zip(ref.model.state_dict().items(), fused.model.state_dict().items()):
        torch.testing.assert_close(vb, va, atol=1e-5, rtol=1e-4, msg=k)
    assert [g["lr"] for g in fused.optimizer.param_groups] == [g["lr"] for g in ref.optimizer.param_groups]
    assert len(fused.optimizer.param_groups) == 4
    for ga, gb in zip(ref.optimizer.param_groups, fused.optimizer.param_groups):
        for pa, pb in zip(ga["params"], gb["params"]):
            sa, sb = ref.optimizer.state[pa], fused.optimizer.state[pb]
            assert set(sa) == set(sb) == {"step", "exp_avg", "exp_avg_sq"}
            for k in sa:
                torch.testing.assert_close(sb[k].cpu(), sa[k].cpu(), atol=1e-6, rtol=1e-4, msg=k)


@pytest.mark.parametrize("arch", ["tiny_convnext", "tiny_swin"])
def test_fused_adamw_clip_warmup_equals_reference_eager(arch):
    ref, fused = recipe_steps(compile=False, arch=arch)
    assert_steps_agree(ref, fused, 4)


def test_fused_adamw_clip_warmup_compiled_once_equals_reference():
    """The same through torch.compile (fullgraph; aot_eager: the whole step traced as one graph
    without code generation, which keeps this test to a minute on 2 cores): equal steps, and no
    graph compiled after warm-up while the learning rate changes every step."""
    ref, fused = recipe_steps(compile=True)
    assert_steps_agree(ref, fused, 5)
    assert fused.recompiles_after_warmup() == 0


def test_fused_adamw_nonfinite_step_leaves_every_state_tensor():
    _, fused = recipe_steps(compile=False)
    x, y = batch6(b=12)
    fused(x, y)
    params = {n: p.detach().clone() for n, p in fused.model.named_parameters()}
    state = {id(p): {k: v.clone() for k, v in fused.optimizer.state[p].items()}
             for g in fused.optimizer.param_groups for p in g["params"]}
    x_bad = x.clone()
    x_bad[0, 0, 0, 0] = float("nan")
    fused(x_bad, y)
    assert int(fused.nonfinite_steps) == 1
    for n, p in fused.model.named_parameters():
        assert torch.equal(p, params[n]), n
    for g in fused.optimizer.param_groups:
        for p in g["params"]:
            for k, v in fused.optimizer.state[p].items():
                assert torch.equal(v, state[id(p)][k]), k
    assert float(fused.optimizer.state[fused.optimizer.param_groups[0]["params"][0]]["step"]) == 1.0


def test_each_fused_step_compiles_into_its_own_cache():
    """Steps of several methods in one process (a benchmark of every method, a test suite) keep
    their graphs apart: each live step's code holds its own graph only, none counts as a
    recompilation of another, and the code the class defines holds none."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    steps = []
    for method in ("vanilla", "mixup", "cutmix"):
        cfg = resolve(dict(dataset="digits", arch="tiny", batch_size=6, epochs=1, amp=False, method=method))
        model = build_model(cfg, 5, True)
        step = FusedStep(model, build_optimizer(model, cfg), Schedule(cfg, 3),
                         Precision.from_config(cfg, torch.device("cpu")), backend="aot_eager")
        for _ in range(3):
            step(*batch6())
        assert step.recompiles_after_warmup() == 0
        steps.append(step)
    codes = [step._compiled._torchdynamo_orig_callable.__code__ for step in steps]
    assert len({id(c) for c in codes}) == 3 and all(c is not FusedStep._step_graph.__code__ for c in codes)
    assert [len(_debug_get_cache_entry_list(c)) for c in codes] == [1, 1, 1]
    assert len(_debug_get_cache_entry_list(FusedStep._step_graph.__code__)) == 0
