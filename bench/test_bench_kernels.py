"""Kernel micro-benchmarks under pytest-benchmark: the EMA update and the generator's two ops.

* ``ema-<trunk>``: the released per-parameter loop, ``_foreach_lerp_``, the shipped fallback, the
  fused op (``torch.ops.adautomix_fast.ema_update_``), the wrapper the engine calls, and a
  ``copy_`` of the same bytes as the bandwidth yardstick, over every parameter of the trunk
  (ResNet-50 with both heads at the gpu and cpu sizes).
* ``attention-<shape>-<mode>`` and ``mix-<shape>-<mode>``: the Triton kernels (CUDA only: on a CPU
  they run in the interpreter, far too slow to time) and their eager twins, forward and
  forward + backward (bench.kernels_generator's cases).

``extra_info`` carries the bytes each call must move and the achieved GB/s (docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
import torch

from adautomix_fast.models import build_classifier
from adautomix_fast.step.ema import momentum_tensor
from bench import kernels_ema, kernels_generator
from bench.common import run_timed

# ---------------------------------------------------------------------------- EMA
EMA_SIZES = {"gpu": ("r50", 100, 10), "cpu": ("r50", 10, 2), "smoke": ("tiny", 2, 1)}
EMA_IMPLS = ("loop", "foreach", "reference", "op", "wrapper", "copy")


@pytest.fixture(scope="module")
def ema_tensors(device, bench_size):

    arch = EMA_SIZES[bench_size][0]
    torch.manual_seed(0)
    params = [p.detach().to(device) for p in build_classifier(arch, 1000, cifar_stem=arch == "tiny").parameters()]
    ema = [p.clone() for p in params]
    return arch, ema, params, momentum_tensor(kernels_ema.MOMENTUM, device)


@pytest.mark.parametrize("impl", EMA_IMPLS)
def test_ema(benchmark, impl, ema_tensors, device, bench_size):
    arch, ema, model, momentum = ema_tensors
    _, rounds, warmup = EMA_SIZES[bench_size]
    numel = sum(p.numel() for p in model)
    benchmark.group = f"ema-{arch}"
    if impl == "copy":
        src = torch.empty(numel, device=device)
        dst = torch.empty_like(src)
        fn, moved = (lambda: dst.copy_(src)), 8 * numel
    else:
        try:
            fn = kernels_ema.make_impl(impl, ema, model, momentum)
        except RuntimeError as exc:   # the op is not built for this device
            pytest.skip(str(exc))
        moved = kernels_ema.BYTES_PER_PARAM * numel
    run_timed(benchmark, fn, device, rounds, warmup)
    benchmark.extra_info.update(impl=impl, parameters=numel, bytes_per_call=moved,
                                gb_per_s=moved / benchmark.stats.stats.median / 1e9)


# ---------------------------------------------------------------------------- generator ops
# Shapes: the GPU sizes (bench.kernels_generator.SHAPES) on a GPU; small ones elsewhere.
GEN_SHAPES = {
    "gpu": kernels_generator.SHAPES,
    "cpu": {"cifar": dict(n=3, b=16, h=8, w=8, H=32, W=32, d=128, c=3),
            "imagenet": dict(n=2, b=2, h=14, w=14, H=224, W=224, d=512, c=3)},
    "smoke": {"cifar": dict(n=3, b=2, h=4, w=4, H=16, W=16, d=8, c=3)},
}
GEN_ROUNDS = {"gpu": (50, 5), "cpu": (5, 1), "smoke": (2, 1)}


def _gen_cases():
    shapes = sorted({name for sizes in GEN_SHAPES.values() for name in sizes})
    for op in ("attention", "mix"):
        for shape in shapes:
            for mode in ("fwd", "fwd+bwd"):
                for provider in ("reference", "triton"):
                    yield op, shape, mode, provider


@pytest.mark.parametrize("op,shape,mode,provider", list(_gen_cases()))
def test_generator_op(benchmark, op, shape, mode, provider, device, bench_size):
    if shape not in GEN_SHAPES[bench_size]:
        pytest.skip(f"no {shape} shape at --bench-size {bench_size}")
    if provider == "triton" and device.type != "cuda":
        pytest.skip("Triton kernels need a GPU to be timed (the CPU interpreter is far too slow)")
    s = GEN_SHAPES[bench_size][shape]
    rounds, warmup = GEN_ROUNDS[bench_size]
    backward = mode == "fwd+bwd"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    benchmark.group = f"{op}-{shape}-{mode}"
    if op == "attention":
        fn = kernels_generator.attention_step(provider, s, dtype, device, backward)
    else:
        fn = kernels_generator.mix_step(provider, s, device, backward)
    run_timed(benchmark, fn, device, rounds, warmup)
    benchmark.extra_info.update(op=op, shape=shape, mode=mode, provider=provider, dtype=str(dtype))
    if op == "mix":
        moved = kernels_generator.mix_bytes(s, backward)
        benchmark.extra_info.update(bytes_per_call=moved, gb_per_s=moved / benchmark.stats.stats.median / 1e9)
