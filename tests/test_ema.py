"""The EMA teacher (docs/algorithm.md, EMA teacher): the momentum schedule at its key steps and the update."""

import math

import pytest
import torch

from adautomix_fast.step.ema import ema_update_, momentum_tensor
from adautomix_fast.step.schedules import ema_momentum


def test_schedule_key_steps():
    T, start, end = 1000, 0.999, 0.999999
    assert ema_momentum(0, T, start, end) == start
    assert ema_momentum(99, T, start, end) == start                 # t < 0.1 T: constant
    at_warmup_end = end - (end - start) * (math.cos(math.pi * 0.1) + 1) / 2
    assert math.isclose(ema_momentum(100, T, start, end), at_warmup_end, rel_tol=0, abs_tol=1e-15)
    assert math.isclose(ema_momentum(500, T, start, end), (start + end) / 2, abs_tol=1e-15)
    assert math.isclose(ema_momentum(T, T, start, end), end, abs_tol=1e-15)
    values = [ema_momentum(t, T, start, end) for t in range(100, T + 1)]
    assert all(a <= b for a, b in zip(values, values[1:]))         # rises monotonically to end


def test_schedule_custom_warmup_fraction():
    assert ema_momentum(19, 100, 0.9, 0.99, warmup=0.2) == 0.9
    assert ema_momentum(20, 100, 0.9, 0.99, warmup=0.2) > 0.9


def test_momentum_tensor_is_0dim_float64_holding_the_exact_value():
    m = momentum_tensor(0.999999, "cpu")
    assert m.dim() == 0 and m.dtype == torch.float64 and float(m) == 0.999999


@pytest.mark.parametrize("momentum", [0.0, 0.3, 0.999, 1.0])
def test_update_matches_formula_in_float64(momentum):
    g = torch.Generator().manual_seed(0)
    sizes = [0, 1, 7, 1000, 70_000]
    ema = [torch.randn(s, generator=g) for s in sizes]
    model = [torch.randn(s, generator=g) for s in sizes]
    expected = [momentum * e.double() + (1 - momentum) * m.double() for e, m in zip(ema, model)]
    ema_update_(ema, model, momentum_tensor(momentum, "cpu"))
    for got, want in zip(ema, expected):
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)
    if momentum == 1.0:
        for got, want in zip(ema, expected):
            assert torch.equal(got.double(), want)   # keeps exactly
    if momentum == 0.0:
        for got, m in zip(ema, model):
            assert torch.equal(got, m)               # copies exactly


def test_a_float64_teacher_is_updated_in_float64():
    """A float64 model (the portable golden step, gradient checks) keeps a float64 teacher: the
    update runs in float64 (the op takes fp32 EMA state only, so its PyTorch twin runs it)."""
    g = torch.Generator().manual_seed(0)
    ema = [torch.randn(5, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)]
    model = [torch.randn(5, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)]
    m = 0.999999
    expected = [m * e + (1 - m) * x for e, x in zip(ema, model)]
    ema_update_(ema, model, momentum_tensor(m, "cpu"))
    for got, want in zip(ema, expected):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, atol=1e-15, rtol=1e-15)
    with pytest.raises(TypeError, match=r"ema\[0\] must be float32"):   # float64 EMA of an fp32 model: no
        ema_update_([torch.zeros(2, dtype=torch.float64)], [torch.zeros(2)], momentum_tensor(m, "cpu"))


def test_update_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="2 EMA tensors but 1 model"):
        ema_update_([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], momentum_tensor(0.5, "cpu"))
