"""GPU-marked checks of the fused step (run by `make gpu-check`; skipped without CUDA).

bf16 tolerances: the fused step under bf16 autocast against the reference step under the same
autocast, from the same weights and plans. Both round activations to bf16 (8 bits of mantissa),
in different kernels and orders, so loss terms agree to about 2e-2 relative and parameters after
3 SGD steps to about 1e-2; fp32 runs are held to 1e-4 as on the CPU.
"""

import copy

import pytest
import torch

from adautomix_fast import AdAutoMix, ReferenceStep, Schedule, build_optimizer, resolve
from adautomix_fast.step.fused import FusedStep
from adautomix_fast.step.precision import Precision

pytestmark = pytest.mark.gpu
B = 16


def make_steps(n, amp, batched=True, channels_last=False, gen_kernels="torch"):
    cfg = resolve(dict(dataset="digits", arch="tiny", mix_samples=n, batch_size=B, epochs=1, amp=amp,
                       channels_last=channels_last, lam_concat=(n == 2), gen_norm=(n == 2)))
    dev = torch.device("cuda")
    torch.manual_seed(0)
    ref_model = AdAutoMix.from_config(cfg, 5, cifar_stem=True).to(dev)
    fused_model = copy.deepcopy(ref_model)
    fused_model.generator.kernels = gen_kernels
    if channels_last:
        ref_model.to(memory_format=torch.channels_last)
        fused_model.to(memory_format=torch.channels_last)
    schedule = Schedule(cfg, steps_per_epoch=4)
    precision = Precision.from_config(cfg, dev)
    ref = ReferenceStep(ref_model, build_optimizer(ref_model, cfg), schedule, precision, channels_last=channels_last)
    fused = FusedStep(fused_model, build_optimizer(fused_model, cfg), schedule, precision,
                      channels_last=channels_last, batched_student=batched)
    return ref, fused


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 3, 32, 32, generator=g).cuda(), torch.randint(0, 5, (B,), generator=g).cuda())


def plan_for(model, seed, use_mixup):
    plan = model.sample_plan(B, generator=torch.Generator(device="cuda").manual_seed(seed))
    return plan._replace(use_mixup=torch.tensor(use_mixup, device="cuda"))


# Two compiled cases (each compile costs tens of seconds; `make gpu-check` gives all GPU tests
# 3 minutes): bf16 + batched + Triton kernels for N = 3, and fp32 + separate passes for N = 2.
@pytest.mark.parametrize("n,amp,batched,gen_kernels", [(3, True, True, "triton"), (2, False, False, "torch")])
def test_fused_cuda_graph_step_equals_reference(n, amp, batched, gen_kernels):
    from torch._dynamo.utils import counters
    counters.clear()
    ref, fused = make_steps(n, amp, batched, channels_last=amp, gen_kernels=gen_kernels)
    x, y = batch()
    loss_tol = dict(atol=2e-2, rtol=2e-2) if amp else dict(atol=1e-4, rtol=1e-4)
    param_tol = dict(atol=1e-2, rtol=1e-2) if amp else dict(atol=1e-4, rtol=1e-4)
    for i, use_mixup in enumerate([False, True, False]):
        plan = plan_for(ref.model, 30 + i, use_mixup)
        a, b = ref(x, y, plan), fused(x, y, plan)
        for k in ("loss", "loss_amce", "loss_re", "loss_gen", "loss_k", "cos"):
            torch.testing.assert_close(b[k], a[k], **loss_tol, msg=f"step {i} {k}")
    for (k, pa), (_, pb) in zip(ref.model.state_dict().items(), fused.model.state_dict().items()):
        if pa.is_floating_point():
            torch.testing.assert_close(pb, pa, **param_tol, msg=k)
    assert fused.recompiles_after_warmup() == 0
    # A CUDA graph was recorded and the later steps replayed it.
    assert counters["inductor"]["cudagraph_skips"] == 0
    from torch._inductor.cudagraph_trees import get_container
    manager = get_container(torch.cuda.current_device()).tree_manager
    assert manager is not None and sum(len(nodes) for nodes in manager.roots.values()) >= 1


def assert_replays_without_host_sync(fused):
    """Warm up and record the step, then replay it with host syncs made errors: the replay
    trains (finite loss, parameters move) and nothing recompiles after the warm-up."""
    x, y = batch()
    fused(x, y)
    fused(x, y)                                   # warm-up and recording
    before = [p.clone() for p in fused.model.student.parameters()]
    torch.cuda.set_sync_debug_mode("error")       # any host sync inside a replay raises
    try:
        out = fused(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(out["loss"]).item()
    assert any(not torch.equal(a, b) for a, b in zip(before, fused.model.student.parameters()))
    assert fused.recompiles_after_warmup() == 0


def test_fused_step_samples_its_plan_inside_the_graph_without_host_sync():
    _, fused = make_steps(3, amp=True, channels_last=True, gen_kernels="triton")
    assert_replays_without_host_sync(fused)


# Every method runs through the same fused step; two representative ones are compiled here (the
# time budget of `make gpu-check`): CutMix (box mask and the no-repeat permutation, in-graph) and
# AutoMix (its own mix block through the Triton kernels).
@pytest.mark.parametrize("method", ["cutmix", "automix"])
def test_a_methods_fused_step_is_one_cuda_graph_without_host_sync(method):
    from torch._dynamo.utils import counters

    from adautomix_fast.registry import build_model
    counters.clear()
    cfg = resolve(dict(dataset="digits", arch="tiny", method=method, batch_size=B, epochs=1, amp=True,
                       channels_last=True))
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(cfg, 5, cifar_stem=True).to(dev).to(memory_format=torch.channels_last)
    if hasattr(model, "generator"):
        model.generator.kernels = "triton"
    fused = FusedStep(model, build_optimizer(model, cfg), Schedule(cfg, steps_per_epoch=4),
                      Precision.from_config(cfg, dev), channels_last=True)
    assert_replays_without_host_sync(fused)
    assert counters["inductor"]["cudagraph_skips"] == 0
