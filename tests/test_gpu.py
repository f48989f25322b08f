"""GPU-marked checks of the reference path (run by `make gpu-check`; skipped without CUDA)."""


import pytest
import torch

from adautomix_fast import AdAutoMix, ReferenceStep, Schedule, build_optimizer, resolve
from adautomix_fast.step.base import make_plan_generator
from adautomix_fast.step.precision import Precision

pytestmark = pytest.mark.gpu


def build(device, n=3, amp=False, channels_last=False):
    cfg = resolve(dict(dataset="digits", arch="tiny", mix_samples=n, batch_size=8, epochs=1, amp=amp,
                       channels_last=channels_last))
    torch.manual_seed(0)
    model = AdAutoMix.from_config(cfg, 5, cifar_stem=True).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    step = ReferenceStep(model, build_optimizer(model, cfg), Schedule(cfg, 4), Precision.from_config(cfg, device),
                         channels_last=channels_last, plan_generator=make_plan_generator(device, 0))
    return model, step


@pytest.mark.parametrize("n", [2, 3])
def test_cuda_step_matches_cpu_step_from_the_same_plan(n):
    cpu_model, cpu_step = build(torch.device("cpu"), n)
    gpu_model, gpu_step = build(torch.device("cuda"), n)
    gpu_model.load_state_dict(cpu_model.state_dict())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 5, (8,), generator=g)
    plan = cpu_model.sample_plan(8, generator=torch.Generator().manual_seed(2))
    out_cpu = cpu_step(x, y, plan)
    out_gpu = gpu_step(x.cuda(), y.cuda(), type(plan)(*(t.cuda() for t in plan)))
    for k in ("loss", "loss_amce", "loss_re", "loss_gen", "loss_k", "cos"):
        torch.testing.assert_close(out_gpu[k].cpu(), out_cpu[k], atol=1e-3, rtol=1e-3)
    for (name, a), (_, b) in zip(cpu_model.state_dict().items(), gpu_model.state_dict().items()):
        torch.testing.assert_close(b.cpu(), a, atol=1e-3, rtol=1e-3, msg=name)


def test_cuda_amp_channels_last_steps_are_finite_and_sample_on_device():
    model, step = build(torch.device("cuda"), 3, amp=True, channels_last=True)
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 5, (8,), device="cuda")
    plan = model.sample_plan(8, generator=step.plan_generator)
    assert all(t.device.type == "cuda" for t in plan)
    for _ in range(3):
        out = step(x, y)
        assert torch.isfinite(out["loss"])
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())
