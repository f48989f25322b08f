"""Generator kernels vs their eager PyTorch twins (docs/benchmarks.md, What bench/ measures).

    python -m bench.kernels_generator --out DIR [--quick] [--shapes cifar,imagenet] [--no-write]

For each shape and each op, the fused Triton kernel (``triton``) and its eager twin
(``reference``, from adautomix_fast.methods.generator) run side by side in this process:
  cross_attention_mask   q, k [N,B,P,D], v [N,B,P] in the AMP dtype (bf16; fp32 too unless --quick)
  upsample_softmax_mix   m fp32 [B,N,h,w], x [B,3,H,W] fp32 channels-last, index [N,B]
in two modes, ``fwd`` (forward only) and ``fwd+bwd`` (forward and backward; gradients for q, k, v,
and for m only in the mix, as in the training step). Reported per case: ms (median, q1, q3 by
CUDA events), peak memory, the reference/triton time ratio and, for the mix, the bytes the op must
move (below) over its time, against the copy bandwidth measured in the same run (target >= 0.8).

Bytes the mix must move (the gather of x reads each image once per slot; L2 cannot hold a
ResNet-50 batch): forward |m| + N|x| + |x_mix|; backward (dL/dm only) |dy| + N|x| + |m| + |dm|
+ 2|T| (T the fp32 row-reduced gradient [B,N,H,w] written and read back).

Shapes: cifar (CIFAR ResNet-18: N=3, B=100, 8x8 -> 32x32, D=128) and imagenet (ResNet-50: N=2,
B=256, 14x14 -> 224x224, D=512). On a CPU the kernels only run in the Triton interpreter, far too
slow to time: the script says so and exits 0. Benchmarks never assert; a failing case is recorded
with its error.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from functools import partial
from typing import Any, Callable, Optional

if __package__ in (None, ""):  # `python bench/kernels_generator.py` as well as -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from adautomix_fast.methods.generator import cross_attention_mask_reference, upsample_softmax_mix_reference
from bench import common

SHAPES: dict[str, dict[str, int]] = {
    "cifar": dict(n=3, b=100, h=8, w=8, H=32, W=32, d=128, c=3),
    "imagenet": dict(n=2, b=256, h=14, w=14, H=224, W=224, d=512, c=3),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.kernels_generator", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results", help="folder of the results JSON (default: bench/results)")
    p.add_argument("--quick", action="store_true", help="fewer timed steps, bf16 attention only (default: off)")
    p.add_argument("--shapes", default="cifar,imagenet", help="comma list of cifar, imagenet (default: both)")
    p.add_argument("--steps", type=int, help="timed steps per case (default: 30, 10 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps per case (default: 3)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--no-write", action="store_true", help="print the table only (default: write the JSON)")
    args = p.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    bad = [s for s in args.shapes if s not in SHAPES]
    if bad:
        p.error(f"--shapes: unknown {bad}; choose from {', '.join(SHAPES)}")
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


# ---------------------------------------------------------------------------- cases
def attention_inputs(s: dict[str, int], dtype: torch.dtype, device: torch.device, grad: bool):
    g = torch.Generator(device=device).manual_seed(0)
    shape = (s["n"], s["b"], s["h"] * s["w"], s["d"])
    q = torch.randn(shape, generator=g, device=device).relu().to(dtype).requires_grad_(grad)
    k = torch.randn(shape, generator=g, device=device).relu().to(dtype).requires_grad_(grad)
    v = torch.randn(shape[:3], generator=g, device=device).to(dtype).requires_grad_(grad)
    return q, k, v


def mix_inputs(s: dict[str, int], device: torch.device, grad: bool):
    g = torch.Generator(device=device).manual_seed(0)
    m = torch.randn(s["b"], s["n"], s["h"], s["w"], generator=g, device=device).requires_grad_(grad)
    x = torch.randn(s["b"], s["c"], s["H"], s["W"], generator=g, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    index = torch.stack([torch.argsort(torch.rand(s["b"], generator=g, device=device)) for _ in range(s["n"])])
    return m, x, index


def attention_step(provider: str, s: dict[str, int], dtype: torch.dtype, device: torch.device,
                   backward: bool) -> Callable[[], Any]:
    if provider == "triton":
        from adautomix_fast.kernels import cross_attention_mask as fn
    else:
        fn = cross_attention_mask_reference
    q, k, v = attention_inputs(s, dtype, device, backward)
    dout = torch.randn(q.shape[:3], device=device)
    scale = s["d"] ** -0.5

    def step():
        out = fn(q, k, v, scale)
        if backward:
            return torch.autograd.grad(out, (q, k, v), dout)
        return out
    return step


def mix_step(provider: str, s: dict[str, int], device: torch.device, backward: bool) -> Callable[[], Any]:
    if provider == "triton":
        from adautomix_fast.kernels import upsample_softmax_mix as fn
    else:
        fn = upsample_softmax_mix_reference
    m, x, index = mix_inputs(s, device, backward)
    dout = torch.randn_like(x)

    def step():
        out = fn(m, x, index)
        if backward:
            return torch.autograd.grad(out, (m,), dout)
        return out
    return step


def mix_bytes(s: dict[str, int], backward: bool, x_elt: int = 4) -> int:
    """Bytes the mix must move (see the module docstring); m, dm and T are fp32."""
    n, b = s["n"], s["b"]
    x = b * s["c"] * s["H"] * s["W"] * x_elt
    m = b * n * s["h"] * s["w"] * 4
    fwd = m + n * x + x
    if not backward:
        return fwd
    rows = b * n * s["H"] * s["w"] * 4
    return fwd + (x + n * x + m + m + 2 * rows)


def copy_bandwidth(device: torch.device, steps: int) -> dict[str, Any]:
    """Device-to-device copy of a 512 MiB buffer: bytes read + written per second."""
    numel = 512 * 2**20 // 4
    src = torch.empty(numel, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t = common.time_steps(partial(dst.copy_, src), device, steps, 3)
    gbps = 2 * numel * 4 / (t["median"] * 1e-3) / 1e9
    del src, dst
    return {"gb_per_s": gbps, "ms": t, "bytes": 2 * numel * 4}


def run_case(make: Callable[[], Callable[[], Any]], device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    common.reset_memory(device)
    try:
        step = make()
        t = common.time_steps(step, device, steps, warmup)
        return {"ms": t, **common.peak_memory(device), "error": None}
    except Exception as exc:  # noqa: BLE001  (benchmarks record failures, never raise)
        traceback.print_exc()
        return {"ms": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}


COLUMNS = [("op", "op", ""), ("shape", "shape", ""), ("dtype", "dtype", ""), ("mode", "mode", ""),
           ("provider", "provider", ""), ("ms_median", "ms med", ".3f"), ("ms_q1", "ms q1", ".3f"),
           ("ms_q3", "ms q3", ".3f"), ("peak_memory_mib", "peak MiB", ".0f"), ("speedup", "ref/triton", ".2f"),
           ("gb_per_s", "GB/s", ".0f"), ("of_copy", "of copy", ".2f"), ("error", "error", "")]


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    info = common.device_info(device)
    if device.type != "cuda":
        print(f"bench.kernels_generator: no CUDA device ({info['name']}): the Triton kernels would run in the "
              "interpreter, far too slow to time; skipping (run it on a GPU, e.g. `make gpu-check`).")
        return 0
    steps = args.steps or (10 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else 3
    print(f"bench.kernels_generator on GPU: {info['name']}  (torch {info['torch']}, triton {info['triton']}, "
          f"cuda {info['cuda']}, driver {info['driver']})", flush=True)
    copy = copy_bandwidth(device, steps)
    print(f"  copy bandwidth: {copy['gb_per_s']:.0f} GB/s (read + write, 512 MiB fp32)", flush=True)

    cases: dict[str, Any] = {}
    ratios: dict[str, Any] = {"kernel/copy_bandwidth_gb_per_s": {"value": copy["gb_per_s"],
                                                                 "meaning": "device copy, read + write bytes / s"}}
    rows = []
    attention_dtypes = ["bf16"] if args.quick else ["bf16", "fp32"]
    for shape in args.shapes:
        s = SHAPES[shape]
        plans = [("cross_attention_mask", dt) for dt in attention_dtypes] + [("upsample_softmax_mix", "fp32")]
        for op, dt in plans:
            for mode in ("fwd", "fwd+bwd"):
                backward = mode == "fwd+bwd"
                pair = {}
                for provider in ("reference", "triton"):
                    if op == "cross_attention_mask":
                        make = lambda p=provider: attention_step(p, s, DTYPES[dt], device, backward)
                    else:
                        make = lambda p=provider: mix_step(p, s, device, backward)
                    print(f"  {op} {shape} {dt} {mode} {provider}: {warmup} warm-up + {steps} timed ...", flush=True)
                    r = run_case(make, device, steps, warmup)
                    r.update(op=op, shape=shape, dtype=dt, mode=mode, provider=provider, config=s)
                    if op == "upsample_softmax_mix" and r["ms"]:
                        nbytes = mix_bytes(s, backward)
                        r["bytes"] = nbytes
                        r["gb_per_s"] = nbytes / (r["ms"]["median"] * 1e-3) / 1e9
                        r["of_copy"] = r["gb_per_s"] / copy["gb_per_s"]
                    key = f"kernel/{op}/{shape}/{dt}/{mode}/{provider}"
                    cases[key] = r
                    pair[provider] = r
                ref, fused = pair["reference"], pair["triton"]
                if ref["ms"] and fused["ms"]:
                    speedup = ref["ms"]["median"] / fused["ms"]["median"]
                    fused["speedup"] = speedup
                    ratios[f"kernel/{op}/{shape}/{dt}/{mode}/reference_over_triton"] = {
                        "value": speedup, "meaning": "eager twin time / fused kernel time (> 1: fused faster)"}
                if fused.get("of_copy") is not None:
                    ratios[f"kernel/{op}/{shape}/{dt}/{mode}/achieved_over_copy_bandwidth"] = {
                        "value": fused["of_copy"], "meaning": "bytes the op must move / time, over copy bandwidth "
                                                               "(target >= 0.8)"}
                rows += [ref, fused]

    print()
    print(f"[GPU] {info['name']}")
    table = [{**r, "ms_median": (r["ms"] or {}).get("median"), "ms_q1": (r["ms"] or {}).get("q1"),
              "ms_q3": (r["ms"] or {}).get("q3")} for r in rows]
    print(common.format_table(table, COLUMNS))
    common.report(ratios, args.out, info, {"kernel_cases": cases, "kernel_ratios": ratios}, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
