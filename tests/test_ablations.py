"""AdAutoMix's ablation switches (paper Tables 5, 8, 9, 10): each changes exactly the term it names;
the defaults are the released step, and that step still computes the recorded golden values."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from adautomix_fast.config import resolve
from adautomix_fast.methods.adautomix import AdAutoMix
from adautomix_fast.step.base import make_plan_generator
from adautomix_fast.step.optim import build_optimizer
from adautomix_fast.step.precision import Precision
from adautomix_fast.step.reference import ReferenceStep
from adautomix_fast.step.schedules import Schedule

B, K = 8, 6
HERE = os.path.dirname(os.path.abspath(__file__))


def model_with(**switches):
    torch.manual_seed(0)
    return AdAutoMix("tiny", K, cifar_stem=True, mix_samples=switches.pop("mix_samples", 3), **switches)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 16, 16, generator=g), torch.randint(0, K, (B,), generator=g)


def losses(model, adversarial: bool, n=3, seed=1):
    x, y = batch()
    model.num_updates.fill_(0 if adversarial else 1)
    plan = model.sample_plan(B, torch.Generator().manual_seed(seed), n=n)
    torch.manual_seed(3)
    return {k: v.detach() for k, v in model.step_losses(x, y, plan).items()}


def close(a, b):
    return torch.allclose(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("adversarial", [True, False])
def test_each_loss_switch_removes_exactly_its_term(adversarial):
    base = losses(model_with(), adversarial)
    beta, alpha = 0.3, 0.5
    expected_changes = {
        # switch: (terms that change, how the total changes)
        "loss_one": ({"loss_re"}, -(1 - alpha) * base["loss_one"]),
        "loss_mce": ({"loss_re"}, -alpha * base["loss_mce"]),
        "loss_amce": (set(), -base["loss_amce"]),
        "loss_k": ({"loss_gen"}, (beta if adversarial else -1.0) * base["loss_k"]),
        "loss_cos": ({"loss_gen"} if adversarial else set(), -(1 - beta) * base["cos"] if adversarial else 0.0),
    }
    for switch, (changed, delta) in expected_changes.items():
        off = losses(model_with(**{switch: False}), adversarial)
        assert set(off) == set(base), switch
        for term in base:
            if term == "loss":
                assert close(off["loss"], base["loss"] + delta), (switch, off["loss"], base["loss"] + delta)
            elif term in changed:
                assert not close(off[term], base[term]), (switch, term)
            else:
                assert torch.equal(off[term], base[term]), (switch, term)   # every other term unchanged


def test_switched_off_generator_terms_remove_the_generators_gradient():
    """loss_k and loss_cos off: the generator gets no gradient from L_gen, only from nothing (the
    student's batch uses detached masks), so its gradient is exactly zero."""
    model = model_with(loss_k=False, loss_cos=False)
    x, y = batch()
    out = model.step_losses(x, y, model.sample_plan(B, torch.Generator().manual_seed(1)))
    grads = torch.autograd.grad(out["loss"], list(model.generator.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    model = model_with()
    out = model.step_losses(x, y, model.sample_plan(B, torch.Generator().manual_seed(1)))
    grads = torch.autograd.grad(out["loss"], list(model.generator.parameters()), allow_unused=True)
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)


@pytest.mark.parametrize("objective,expected", [("alternate", [1.0, 0.0, 1.0, 0.0]), ("adversarial", [1.0] * 4),
                                                ("cooperative", [0.0] * 4)])
def test_generator_objective(objective, expected):
    model = model_with(gen_objective=objective)
    seen = []
    for step in range(4):
        model.num_updates.fill_(step)
        seen.append(float(model.adversarial()))
    assert seen == expected


def test_mix_alpha_sets_the_lambda_law():
    """N independent Beta(a, a) draws normalised by their sum (N >= 3); a = 1 is today's uniform."""
    for alpha, n in ((0.2, 3), (5.0, 3), (2.0, 2)):
        model = model_with(mix_alpha=alpha, mix_samples=n)
        g = torch.Generator().manual_seed(0)
        lams = torch.stack([model.sample_plan(4, g).lam_gen for _ in range(1500)]).double()
        assert torch.allclose(lams.sum(1), torch.ones(1500, dtype=torch.float64), atol=1e-6)
        assert abs(float(lams[:, 0].mean()) - 1 / n) < 0.03
    # larger a concentrates lambda around 1/N: the spread falls with a
    spread = {}
    for alpha in (0.2, 1.0, 5.0):
        g = torch.Generator().manual_seed(0)
        model = model_with(mix_alpha=alpha)
        spread[alpha] = float(torch.stack([model.sample_plan(4, g).lam_gen for _ in range(1000)])[:, 0].std())
    assert spread[0.2] > spread[1.0] > spread[5.0]


def test_mix_alpha_one_draws_exactly_todays_plan():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = model_with(mix_alpha=1.0).sample_plan(B, g1)
    u = torch.rand(3, generator=g2)
    assert torch.equal(a.lam_gen, u / u.sum())


def test_random_mix_samples_draws_n_per_step_from_seed_and_step():
    model = model_with(random_mix_samples=True, mix_samples=4, seed=11)
    ns = [model.mix_samples_at(s) for s in range(200)]
    assert set(ns) == {2, 3, 4}
    assert ns == [model_with(random_mix_samples=True, mix_samples=4, seed=11).mix_samples_at(s) for s in range(200)]
    assert model_with().mix_samples_at(5) is None
    # the reference step mixes that many images at each step
    cfg = resolve(dict(arch="tiny", batch_size=B, epochs=1, mix_samples=4, random_mix_samples=True, amp=False, seed=11))
    torch.manual_seed(0)
    model = AdAutoMix.from_config(cfg, K, cifar_stem=True)
    step = ReferenceStep(model, build_optimizer(model, cfg), Schedule(cfg, 6),
                         Precision.from_config(cfg, torch.device("cpu")),
                         plan_generator=make_plan_generator(torch.device("cpu"), 0))
    for s in range(6):
        out = step(*batch(s))
        # loss_mce only exists when N >= 3
        assert ("loss_mce" in out) == (ns[s] >= 3), (s, ns[s])


def test_gen_train_prob_gates_the_generator_objective():
    model = model_with(gen_train_prob=0.5)
    g = torch.Generator().manual_seed(0)
    flags = [bool(model.sample_plan(4, g).train_gen) for _ in range(400)]
    assert 150 < sum(flags) < 250
    x, y = batch()
    plan = model.sample_plan(B, torch.Generator().manual_seed(1))
    plan = plan._replace(train_gen=torch.tensor(False))
    out = model.step_losses(x, y, plan)
    assert float(out["loss_gen"].detach()) == 0.0 and float(out["loss_k"].detach()) > 0
    assert float(out["train_gen"]) == 0.0
    assert model_with().sample_plan(B).train_gen is None      # default: no coin drawn


def test_switches_come_from_the_cli_config():
    cfg = resolve(dict(arch="tiny", loss_cos=False, gen_objective="cooperative", mix_alpha=2.0, gen_train_prob=0.8,
                       random_mix_samples=True))
    model = AdAutoMix.from_config(cfg, K, cifar_stem=True)
    assert (model.loss_cos, model.gen_objective, model.mix_alpha, model.gen_train_prob, model.random_mix_samples) == \
        (False, "cooperative", 2.0, 0.8, True)


# ---------------------------------------------------------------------------- defaults: the golden step
# The released step's settings, each named explicitly: what the defaults must be.
RELEASED = dict(loss_one=True, loss_mce=True, loss_amce=True, loss_k=True, loss_cos=True, gen_objective="alternate",
                mix_alpha=1.0, random_mix_samples=False, gen_train_prob=1.0, label_smoothing=0.0, mask_loss=0.0)


def three_steps(settings: dict) -> tuple[list[dict], dict]:
    cfg = resolve(dict(dataset="digits", arch="tiny", batch_size=B, epochs=2, amp=False, **settings))
    assert cfg.method == "adautomix"
    torch.manual_seed(0)
    model = AdAutoMix.from_config(cfg, K, cifar_stem=True)
    step = ReferenceStep(model, build_optimizer(model, cfg), Schedule(cfg, 3),
                         Precision.from_config(cfg, torch.device("cpu")),
                         plan_generator=make_plan_generator(torch.device("cpu"), 0))
    outs = [step(*batch(s)) for s in range(3)]
    return outs, model.state_dict()


def test_defaults_are_the_released_step_bit_for_bit():
    """The default config and the released settings typed out explicitly give the same step, bit
    for bit: both run here, in one process, so no CPU can make them differ."""
    default_out, default_state = three_steps({})
    flagged_out, flagged_state = three_steps(RELEASED)
    for a, b in zip(default_out, flagged_out):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(default_state[k], flagged_state[k]) for k in default_state)


# float64 rounding is 1.1e-16; the same steps computed by different CPUs' float64 kernels (AVX2,
# AVX-512, ATen's unvectorised default) agreed to 1.8e-15 relative. A change of the step's
# mathematics, or one fp32 rounding creeping into it (fp32 epsilon 6e-8), moves these values by
# far more than the tolerance below, which sits between the two.
GOLDEN_RTOL, GOLDEN_ATOL = 1e-9, 1e-12


def test_defaults_reproduce_the_golden_step():
    """Losses of 3 reference and 3 eager fused steps with the default switches, and a checksum of
    every parameter and buffer afterwards, equal the recorded ones (tests/data/adautomix_golden.json)
    on any CPU: the step runs in float64 with portable weights (tests/golden_adautomix.py)."""
    golden = json.load(open(os.path.join(HERE, "data", "adautomix_golden.json")))["values"]
    code = os.path.join(HERE, "golden_adautomix.py")
    out = subprocess.run([sys.executable, code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got.keys() == golden.keys()
    for run, expected in golden.items():
        assert [s.keys() for s in got[run]["steps"]] == [s.keys() for s in expected["steps"]], run
        for i, (g, e) in enumerate(zip(got[run]["steps"], expected["steps"])):
            for term in e:
                assert g[term] == pytest.approx(e[term], rel=GOLDEN_RTOL, abs=GOLDEN_ATOL), (run, i, term)
        assert got[run]["checksum"] == pytest.approx(expected["checksum"], rel=GOLDEN_RTOL), run
