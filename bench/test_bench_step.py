"""Step throughput under pytest-benchmark: one benchmark per (shape, impl), grouped per shape.

The impls are bench.step's builders (``bench.step.IMPLS``), on the same synthetic batch. On a CPU
the compiled impls (``vanilla_compiled``, ``fused*``) spend minutes compiling: they run with
``--bench-compiled`` (always on CUDA). The ratio report of the same impls side by side in one
process is ``python -m bench.step``.
"""

from __future__ import annotations

import pytest

from bench import step as step_bench
from bench.common import run_timed

COMPILED = {"vanilla_compiled", "fused", "fused_separate", *step_bench.METHOD_IMPLS}

# (batch size, arch override, image size override, timed rounds, warm-up rounds) per size.
SIZES = {
    "gpu": {"cifar": (100, None, None, 30, 5), "imagenet": (256, None, None, 20, 5),
            "swin": (100, None, None, 20, 5), "convnext-cifar": (100, None, None, 30, 5),
            "imagenet-timm": (256, None, None, 20, 5)},
    "cpu": {"cifar": (16, None, None, 3, 1), "imagenet": (2, None, None, 3, 1),
            "swin": (2, None, None, 3, 1), "convnext-cifar": (8, None, None, 3, 1),
            "imagenet-timm": (2, None, None, 3, 1)},
    "smoke": {"cifar": (4, "tiny", 16, 2, 1), "imagenet": (4, "tiny", 32, 2, 1),
              "swin": (4, "tiny_swin", 32, 2, 1), "convnext-cifar": (4, "tiny_convnext", 16, 2, 1),
              "imagenet-timm": (4, "timm/resnet18", 32, 2, 1)},
}


@pytest.mark.parametrize("impl", list(step_bench.IMPLS))
@pytest.mark.parametrize("shape", list(step_bench.SHAPES))
def test_step(benchmark, shape, impl, device, bench_size, bench_compiled):
    if impl in COMPILED and not bench_compiled:
        pytest.skip("compiled step on a CPU: pass --bench-compiled (minutes of compilation)")
    batch, arch, size, rounds, warmup = SIZES[bench_size][shape]
    cuda = device.type == "cuda"
    case = step_bench.case_for(shape, device, batch_size=batch, arch=arch, image_size=size,
                               amp=cuda, channels_last=cuda)   # the GPU's training settings
    case.make_data()
    benchmark.group = f"step-{shape}"
    benchmark.extra_info.update(impl=impl, shape=shape, variant=case.variant, batch_size=case.batch_size)
    fn = step_bench.IMPLS[impl](case)
    run_timed(benchmark, fn, device, rounds, warmup)
    benchmark.extra_info["images_per_s"] = case.batch_size / benchmark.stats.stats.median
