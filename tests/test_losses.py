"""Loss terms (docs/algorithm.md, Losses) against values computed by hand, the sampling plan,
the margin rule and the adversarial/cooperative alternation."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from adautomix_fast.methods.adautomix import AdAutoMix, MixPlan, margin_rule, mixed_cross_entropy, weighted_cosine


def hand_ce(row, label):
    """-log softmax(row)[label], written out."""
    return -(row[label] - math.log(sum(math.exp(v) for v in row)))


def test_mixed_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 2])
    index = torch.tensor([[0, 1], [1, 0]])        # slot 0: identity, slot 1: swapped
    lam = torch.tensor([0.7, 0.3])
    rows = logits.tolist()
    ce_slot0 = (hand_ce(rows[0], 0) + hand_ce(rows[1], 2)) / 2   # labels y[[0,1]] = [0,2]
    ce_slot1 = (hand_ce(rows[0], 2) + hand_ce(rows[1], 0)) / 2   # labels y[[1,0]] = [2,0]
    expected = 0.7 * ce_slot0 + 0.3 * ce_slot1
    assert math.isclose(float(mixed_cross_entropy(logits, y, index, lam)), expected, rel_tol=1e-6)


def test_weighted_cosine_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s0 = torch.tensor([[1.0, 0.0], [-1.0, -1.0]])   # cos: 1, -1
    s1 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])     # cos: 0, 1/sqrt(2)
    lam = torch.tensor([0.25, 0.75])
    expected = ((0.25 * 1 + 0.75 * 0) + (0.25 * -1 + 0.75 / math.sqrt(2))) / 2
    assert math.isclose(float(weighted_cosine(z, [s0, s1], lam)), expected, rel_tol=1e-6)


@pytest.mark.parametrize("lam,expected", [(0.02, True), (0.03, True), (0.031, False), (0.5, False),
                                          (0.969, False), (0.975, True)])
def test_margin_rule_two_samples(lam, expected):
    lam_cls = torch.tensor([lam, 1.0 - lam])
    assert bool(margin_rule(lam_cls, 0.03)) is expected


@pytest.mark.parametrize("lam1,expected", [(0.02, True), (0.03, True), (0.04, False), (0.96, False),
                                           (0.975, True)])
def test_margin_rule_three_or_more_samples(lam1, expected):
    rest = (1.0 - lam1) / 2
    assert bool(margin_rule(torch.tensor([lam1, rest, rest]), 0.03)) is expected


def tiny_model(n, **kw):
    torch.manual_seed(0)
    return AdAutoMix("tiny", 5, cifar_stem=True, mix_samples=n, **kw)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_sample_plan_law(n):
    model = tiny_model(n)
    b = 9
    g = torch.Generator().manual_seed(3)
    plan = model.sample_plan(b, generator=g)
    assert plan.index_gen.shape == (n, b) and plan.index_cls.shape == (n, b)
    for idx in (plan.index_gen, plan.index_cls):
        for row in idx:
            assert sorted(row.tolist()) == list(range(b))   # every row a permutation
    torch.testing.assert_close(plan.lam_gen.sum(), torch.tensor(1.0))
    torch.testing.assert_close(plan.lam_cls.sum(), torch.tensor(1.0))
    assert (plan.lam_gen >= 0).all() and (plan.lam_cls >= 0).all()
    if n == 2:
        # pi = (identity, p), sigma = (identity, p'); two independent ratios
        assert plan.index_gen[0].tolist() == list(range(b)) == plan.index_cls[0].tolist()
        assert not torch.equal(plan.lam_gen, plan.lam_cls)
    else:
        assert torch.equal(plan.lam_gen, plan.lam_cls)
        assert not torch.equal(plan.index_gen, plan.index_cls)
    # reproducible from the generator
    again = model.sample_plan(b, generator=torch.Generator().manual_seed(3))
    for a, c in zip(plan, again):
        assert (a is None and c is None) or torch.equal(a, c)
    assert plan.train_gen is None   # default gen_train_prob = 1: trained every step
    assert plan.use_mixup.dtype == torch.bool and plan.use_mixup.dim() == 0


def fixed_plan(n, b, lam, use_mixup=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lam = torch.tensor(lam, dtype=torch.float32)
    if n == 2:
        ident = torch.arange(b)
        index_gen = torch.stack([ident, torch.randperm(b, generator=g)])
        index_cls = torch.stack([ident, torch.randperm(b, generator=g)])
        lam_gen, lam_cls = lam, torch.tensor([0.6, 0.4])
    else:
        index_gen = torch.stack([torch.randperm(b, generator=g) for _ in range(n)])
        index_cls = torch.stack([torch.randperm(b, generator=g) for _ in range(n)])
        lam_gen = lam_cls = lam
    return MixPlan(lam_gen, lam_cls, index_gen, index_cls, torch.tensor(use_mixup))


def batch(b=6, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 16, 16, generator=g), torch.randint(0, classes, (b,), generator=g)


def record_inputs(module):
    seen = []
    handle = module.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen, handle


@pytest.mark.parametrize("n", [2, 3])
def test_step_losses_compose_as_specified(n):
    model = tiny_model(n, beta=0.3, alpha=0.5)
    x, y = batch()
    lam = [0.3, 0.7] if n == 2 else [0.2, 0.3, 0.5]
    plan = fixed_plan(n, x.shape[0], lam)
    student_copy = copy.deepcopy(model.student)
    t = model.step_losses(x, y, plan)
    # L_one: CE of head_one on the clean batch (the student's first pass: same BN batch stats).
    one_logits, _ = student_copy(x)
    torch.testing.assert_close(t["loss_one"], F.cross_entropy(one_logits, y))
    if n >= 3:
        torch.testing.assert_close(t["loss_re"], 0.5 * t["loss_one"] + 0.5 * t["loss_mce"])
    else:
        assert "loss_mce" not in t
        torch.testing.assert_close(t["loss_re"], t["loss_one"])
    # first step of training: adversarial
    assert float(t["adversarial"]) == 1.0
    torch.testing.assert_close(t["loss_gen"], -0.3 * t["loss_k"] + 0.7 * t["cos"])
    torch.testing.assert_close(t["loss"], t["loss_amce"] + t["loss_re"] + t["loss_gen"])
    # cooperative on the 2nd, 4th, ... step
    model.num_updates.fill_(1)
    t2 = model.step_losses(x, y, plan)
    assert float(t2["adversarial"]) == 0.0
    torch.testing.assert_close(t2["loss_gen"], t2["loss_k"])


def test_student_sees_clean_pixel_mix_and_generated_mix_in_that_order():
    n = 3
    model = tiny_model(n)
    x, y = batch()
    lam = torch.tensor([0.2, 0.3, 0.5])
    plan = fixed_plan(n, x.shape[0], lam.tolist())
    seen, handle = record_inputs(model.student)
    t = model.step_losses(x, y, plan)
    handle.remove()
    assert len(seen) == 3
    pixel = sum(lam[i] * x[plan.index_cls[i]] for i in range(n))
    torch.testing.assert_close(seen[0], x)
    torch.testing.assert_close(seen[1], pixel)
    assert not torch.allclose(seen[2], pixel, atol=1e-3)     # generated masks, not constant
    # L_mce is MCE of head_mix on the pixel mix, with the sigma tuple
    assert torch.isfinite(t["loss_mce"])


@pytest.mark.parametrize("n", [2, 3])
def test_margin_rule_makes_classifier_batch_plain_mixup(n):
    model = tiny_model(n)
    x, y = batch()
    lam = [0.3, 0.7] if n == 2 else [0.2, 0.3, 0.5]
    plan = fixed_plan(n, x.shape[0], lam, use_mixup=True)
    seen, handle = record_inputs(model.student)
    model.step_losses(x, y, plan)
    handle.remove()
    pixel = sum(plan.lam_cls[i] * x[plan.index_cls[i]] for i in range(n))
    torch.testing.assert_close(seen[-1], pixel)


def test_generator_gradient_flips_with_the_alternation():
    """Only G receives gradient from L_gen; its gradient is that of -beta*L_k + (1-beta)*cos on
    adversarial steps and of +L_k on cooperative steps."""
    n, beta = 3, 0.3
    x, y = batch()
    plan = fixed_plan(n, x.shape[0], [0.2, 0.3, 0.5])

    def gen_grads(num_updates, term):
        model = tiny_model(n, beta=beta)
        model.num_updates.fill_(num_updates)
        t = model.step_losses(x, y, plan)
        model.zero_grad()
        t[term].backward()
        return [p.grad.clone() for p in model.generator.parameters()], model

    g_adv, model = gen_grads(0, "loss")
    g_k, _ = gen_grads(0, "loss_k")
    g_cos, _ = gen_grads(0, "cos")
    for ga, gk, gc in zip(g_adv, g_k, g_cos):
        torch.testing.assert_close(ga, -beta * gk + (1 - beta) * gc, atol=1e-7, rtol=1e-4)
    g_coop, _ = gen_grads(1, "loss")
    g_k1, _ = gen_grads(1, "loss_k")
    for gc, gk in zip(g_coop, g_k1):
        torch.testing.assert_close(gc, gk, atol=1e-7, rtol=1e-4)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_student_gradient_does_not_depend_on_generator_objective():
    """The classifier mix uses detached masks: the student's gradient is the same whatever the
    generator's objective (adversarial or cooperative)."""
    x, y = batch()
    plan = fixed_plan(3, x.shape[0], [0.2, 0.3, 0.5])
    grads = []
    for parity in (0, 1):
        model = tiny_model(3)
        model.num_updates.fill_(parity)
        model.step_losses(x, y, plan)["loss"].backward()
        grads.append([p.grad.clone() for p in model.student.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n", [2, 3])
def test_teacher_forward_count_and_order(n):
    """Teacher: x, x_g, then the N cosine sources x[pi_i] (BN running statistics follow the
    released order); the student runs 3 passes for N >= 3, 2 for N = 2."""
    model = tiny_model(n)
    x, y = batch()
    lam = [0.3, 0.7] if n == 2 else [0.2, 0.3, 0.5]
    plan = fixed_plan(n, x.shape[0], lam)
    seen, handle = record_inputs(model.teacher)
    model.step_losses(x, y, plan)
    handle.remove()
    assert len(seen) == 2 + n
    torch.testing.assert_close(seen[0], x)
    for i in range(n):
        torch.testing.assert_close(seen[2 + i], x[plan.index_gen[i]])
    assert int(model.teacher.bn1.num_batches_tracked) == 2 + n
    assert int(model.teacher.layer4[0].bn1.num_batches_tracked) == 2 + n
    assert int(model.student.bn1.num_batches_tracked) == (3 if n >= 3 else 2)
