"""In-graph optimizers, clipping, weight-decay groups and the warm-up schedule (issue 14)."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adautomix_fast import AdAutoMix
from adautomix_fast.config import Config, resolve
from adautomix_fast.engine import Schedule
from adautomix_fast.engine import build_optimizer as engine_build_optimizer
from adautomix_fast.errors import UsageError
from adautomix_fast.optim import (InGraphOptimizer, WarmupCosineSchedule, build_optimizer, clip_grad_norm_,
                                  no_weight_decay, param_groups, unscale_and_check_, warmup_cosine_lr)


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
    cfg = resolve(dict(dataset="digits", arch="tiny"))
    model = AdAutoMix("tiny", 5, cifar_stem=True)
    mine, theirs = build_optimizer(model, cfg), engine_build_optimizer(model, cfg)
    assert type(mine) is type(theirs) is torch.optim.SGD
    assert [g["params"] for g in mine.param_groups] == [g["params"] for g in theirs.param_groups]
    assert [(g["lr"], g["weight_decay"], g["momentum"]) for g in mine.param_groups] == \
        [(g["lr"], g["weight_decay"], g["momentum"]) for g in theirs.param_groups]
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
    jump = abs(warmup_cosine_lr(200, total, 5e-4, 1e-4, warmup, 1e-5) - warmup_cosine_lr(199, total, 5e-4, 1e-4, warmup, 1e-5))
    assert jump < 5e-4 / warmup * 1.01


def test_schedule_uses_the_config_and_equals_engine_without_warmup():
    cfg = resolve({}, "cifar100-swin_t")
    sched = WarmupCosineSchedule(cfg, steps_per_epoch=500)
    assert sched.warmup_steps == 20 * 500 and sched.total_steps == 200 * 500
    s0, g0 = sched.lrs(0)
    assert s0 == pytest.approx(5e-4 * 1e-5) and g0 == pytest.approx(1e-3 * 1e-5)
    assert sched.lrs(sched.total_steps - 1)[0] == pytest.approx(1e-4, rel=1e-3)
    assert sched.lrs(10_000)[1] == pytest.approx(1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * 0.1)) / 2)
    plain = resolve(dict(dataset="cifar100", epochs=7))
    a, b = WarmupCosineSchedule(plain, 9), Schedule(plain, 9)
    for step in range(0, 63, 5):
        assert a.lrs(step) == pytest.approx(b.lrs(step)) and a.ema(step) == b.ema(step)


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
