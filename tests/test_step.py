"""One whole reference step: what it changes and what it must leave alone."""

import copy

import pytest
import torch

from adautomix_fast import AdAutoMix, ReferenceStep, Schedule, build_optimizer, resolve
from adautomix_fast.step.base import make_plan_generator
from adautomix_fast.step.precision import Precision
from adautomix_fast.step.schedules import cosine_lr


def make(n=3, amp=False, amp_dtype="bf16", **overrides):
    cfg = resolve(dict(dataset="digits", arch="tiny", mix_samples=n, batch_size=6, epochs=2, amp=amp,
                       amp_dtype=amp_dtype, **overrides))
    torch.manual_seed(0)
    model = AdAutoMix.from_config(cfg, 5, cifar_stem=True)
    opt = build_optimizer(model, cfg)
    step = ReferenceStep(model, opt, Schedule(cfg, steps_per_epoch=10), Precision.from_config(cfg, torch.device("cpu")),
                         plan_generator=make_plan_generator(torch.device("cpu"), cfg.seed))
    return cfg, model, opt, step


def batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 16, 16, generator=g), torch.randint(0, 5, (b,), generator=g)


@pytest.mark.parametrize("n", [2, 3])
def test_one_step_updates_student_and_generator_and_teacher_by_ema(n):
    cfg, model, opt, step = make(n)
    before = copy.deepcopy(model.state_dict())
    x, y = batch()
    out = step(x, y)
    assert torch.isfinite(out["loss"])
    after = model.state_dict()
    changed = lambda prefix: any(not torch.equal(before[k], after[k]) for k in before
                                 if k.startswith(prefix) and after[k].is_floating_point())
    assert changed("student.") and changed("generator.")
    # Teacher parameters: exactly theta_k <- m theta_k + (1-m) theta_q with the schedule's m(0).
    m = step.schedule.ema(0)
    assert m == cfg.ema_start
    for name, p in model.teacher.named_parameters():
        expected = torch.lerp(before["teacher." + name], after["student." + name], 1 - m)
        # One fp32 rounding apart at most: ATen's CPU lerp kernel is compiled with FMA
        # contraction (e + w * d rounded once), the op's portable C++ rounds the product first.
        torch.testing.assert_close(p, expected, atol=1e-7, rtol=2 ** -23)
    # Teacher buffers: its own, updated by its own forwards, different from the student's.
    assert not torch.equal(after["teacher.bn1.running_mean"], after["student.bn1.running_mean"])
    assert int(model.num_updates) == 1 and step.global_step == 1
    # the teacher is never in the optimizer
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in model.teacher.parameters())


def test_sgd_settings_and_generator_group():
    cfg, model, opt, step = make(gen_lr=0.05, gen_min_lr=0.001)
    assert [g["name"] for g in opt.param_groups] == ["student", "generator"]
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in opt.param_groups)
    lr, lr_gen = step.schedule.lrs(0)
    assert (lr, lr_gen) == (cfg.lr, 0.05)
    # epoch-wise cosine: epoch 1 of 2 is halfway
    assert step.schedule.lrs(10) == (cosine_lr(cfg.lr, cfg.min_lr, 0.5), cosine_lr(0.05, 0.001, 0.5))
    x, y = batch()
    step(x, y)
    assert opt.param_groups[1]["lr"] == 0.05


def test_alternation_follows_the_step_count():
    _, model, _, step = make()
    x, y = batch()
    flags = [float(step(x, y)["adversarial"]) for _ in range(4)]
    assert flags == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_amp_step_on_cpu_keeps_losses_and_ema_in_fp32(amp_dtype):
    _, model, _, step = make(amp=True, amp_dtype=amp_dtype)
    x, y = batch()
    out = step(x, y)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert (step.scaler is not None) == (amp_dtype == "fp16")
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())
    # the generator's masks are fp32 under autocast
    with step.precision.autocast():
        f3 = model.teacher.stem_to_stage3(x)
        plan = model.sample_plan(6)
        m = model.generator.mask_logits(f3, plan.index_gen, plan.lam_gen)
    assert m.dtype == torch.float32


def test_same_seed_same_steps():
    losses = []
    for _ in range(2):
        _, _, _, step = make()
        x, y = batch()
        losses.append([float(step(x, y)["loss"]) for _ in range(2)])
    assert losses[0] == losses[1]


def test_channels_last_step_matches_contiguous():
    outs = []
    for cl in (False, True):
        cfg, model, opt, step = make(channels_last=cl)
        if cl:
            model.to(memory_format=torch.channels_last)
        step.channels_last = cl
        x, y = batch()
        outs.append(step(x, y)["loss"])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
