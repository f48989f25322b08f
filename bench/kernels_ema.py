"""EMA teacher update over every ResNet-50 parameter: the released loop vs foreach vs the fused op.

    python -m bench.kernels_ema [--out DIR] [--quick] [--device auto|cpu|cuda] [--steps N]
                                [--warmup N] [--threads N] [--no-write]

The parameters are those of ``build_classifier('r50', 1000, cifar_stem=False)`` (torchvision ResNet-50
plus two 2048x1000 heads), fp32; the EMA copy is fp32 too. Impls, timed in one process on the
same tensors (momentum 0.999):
  loop       the released code: ``k.data = k.data * m + q.data * (1 - m)`` per parameter
  foreach    ``torch._foreach_lerp_(ema, model, 1 - m)`` with a Python float (timm's ModelEmaV3)
  reference  ``adautomix_fast.step.ema.ema_update_reference``: the shipped fallback (validation and
             ``_foreach_lerp_`` with the weight as a 0-dim device tensor: no host sync)
  op         ``torch.ops.adautomix_fast.ema_update_`` (csrc/), the momentum a 0-dim device tensor
  wrapper    ``adautomix_fast.step.ema.ema_update_``: the op behind the Python wrapper the engine calls
  copy       ``dst.copy_(src)`` moving as many bytes as one EMA update: the bandwidth yardstick
             (docs/benchmarks.md, Targets: op >= 0.8 of it on a GPU)
  add_       ``a.add_(b)`` over as many fp32 elements as there are parameters: the same access
             pattern as the EMA (read a, read b, write a) in one kernel, a second yardstick. On
             a CPU a copy also reads its destination before writing it (write-allocate), which
             the 8 counted bytes do not include, so there an update can beat "copy bandwidth".
Achieved bandwidth counts 12 bytes per parameter (read EMA, read model, write EMA); ``copy``
counts 8 bytes per copied fp32 element, ``add_`` 12. Reported: times, GB/s, each impl's
bandwidth over the copy's and over add_'s, and time ratios against the op. Benchmarks never
assert; a failing impl is recorded.
Results go to the ``kernels`` and ``ratios`` sections of bench.common's results file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from functools import partial
from typing import Any, Callable, Optional

if __package__ in (None, ""):  # `python bench/kernels_ema.py` as well as -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from adautomix_fast.models import build_classifier
from adautomix_fast.step import ema as ema_mod
from bench import common

MOMENTUM = 0.999
BYTES_PER_PARAM = 12  # fp32 EMA read + write, fp32 model read
IMPLS = ("loop", "foreach", "reference", "op", "wrapper")
# (timed steps, warm-up) per device kind and mode.
SIZES = {"cuda": (100, 10), "cuda-quick": (30, 5), "cpu": (15, 2), "cpu-quick": (3, 1)}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.kernels_ema", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results", help="folder of the results JSON (default: bench/results)")
    p.add_argument("--quick", action="store_true", help="fewer timed steps (default: off)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto: the GPU when present)")
    p.add_argument("--steps", type=int, help="timed calls per impl (default: 100 on GPU, 15 on CPU; --quick 30 / 3)")
    p.add_argument("--warmup", type=int, help="untimed calls per impl (default: 10 on GPU, 2 on CPU; --quick 5 / 1)")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's default)")
    p.add_argument("--no-write", action="store_true", help="print the table only (default: write the JSON)")
    args = p.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def resnet50_parameters(device: torch.device) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = build_classifier("r50", 1000, cifar_stem=False)
    return [p.detach().to(device) for p in model.parameters()]


def make_impl(name: str, ema: list[torch.Tensor], model: list[torch.Tensor],
              momentum: torch.Tensor) -> Callable[[], Any]:
    m = MOMENTUM
    if name == "loop":
        def loop() -> None:
            for k, q in zip(ema, model):
                k.data = k.data * m + q.data * (1.0 - m)
        return loop
    if name == "foreach":
        return lambda: torch._foreach_lerp_(ema, model, 1.0 - m)
    if name == "reference":
        return lambda: ema_mod.ema_update_reference(ema, model, momentum)
    if name in ("op", "wrapper"):
        if not ema_mod.extension_info()[momentum.device.type]:
            info = ema_mod.extension_info()
            raise RuntimeError(f"the op is not built for {momentum.device.type}: {info['error'] or 'no kernel'}")
        if name == "op":
            op = torch.ops.adautomix_fast.ema_update_.default
            return lambda: op(ema, model, momentum)
        return lambda: ema_mod.ema_update_(ema, model, momentum)
    raise ValueError(name)


def interleaved_ms(fns: dict[str, Callable[[], Any]], device: torch.device, steps: int,
                   warmup: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-call milliseconds of every impl, timed round-robin (one call of each impl per round)
    so that a machine shared with other work slows every impl alike; (times, errors)."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    errors: dict[str, str] = {}
    cuda = device.type == "cuda"
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            if cuda:
                torch.cuda.synchronize(device)
        except Exception as exc:  # out of memory, ...: record and go on without it
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    live = [n for n in fns if n not in errors]
    events: dict[str, list[Any]] = {n: [] for n in live}
    for _ in range(steps):
        for name in live:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[name]()
                end.record()
                events[name].append((start, end))
            else:
                t = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - t) * 1e3)
    if cuda:
        torch.cuda.synchronize(device)
        for name in live:
            times[name] = [a.elapsed_time(b) for a, b in events[name]]
    return times, errors


def summarise(name: str, ms: list[float], bytes_moved: int, error: Optional[str]) -> dict[str, Any]:
    record: dict[str, Any] = {"bench": "kernels_ema", "impl": name, "error": error, "bytes_per_call": bytes_moved}
    if error is None and ms:
        record["ms"] = common.summarize(ms)
        med = record["ms"]["median"]
        record["timed_calls"] = len(ms)
        record["gb_per_s"] = bytes_moved / (med / 1e3) / 1e9
    return record


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = common.device_info(device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    steps, warmup = SIZES[kind + ("-quick" if args.quick else "")]
    steps = args.steps if args.steps is not None else steps
    warmup = args.warmup if args.warmup is not None else warmup
    label = "GPU" if device.type == "cuda" else "CPU"
    print(f"bench.kernels_ema on {label}: {info['name']}  (torch {info['torch']}, cuda {info['cuda']}, "
          f"threads {torch.get_num_threads()}); extension {ema_mod.extension_info()}", flush=True)

    model = resnet50_parameters(device)
    ema = [p.clone() for p in model]
    numel = sum(p.numel() for p in model)
    momentum = ema_mod.momentum_tensor(MOMENTUM, device)
    config = {"model": "build_classifier('r50', 1000, cifar_stem=False)", "tensors": len(model), "parameters": numel,
              "dtype": "float32", "momentum": MOMENTUM, "steps": steps, "warmup": warmup,
              "threads": torch.get_num_threads(), "device_kind": label}
    print(f"  {len(model)} tensors, {numel / 1e6:.2f} M parameters, {BYTES_PER_PARAM * numel / 1e6:.0f} MB per update; "
          f"{warmup} warm-up + {steps} timed calls per impl", flush=True)

    records: dict[str, dict[str, Any]] = {}
    fns: dict[str, Callable[[], Any]] = {}
    nbytes: dict[str, int] = {}
    for name in IMPLS:
        try:
            fns[name] = make_impl(name, ema, model, momentum)
            nbytes[name] = BYTES_PER_PARAM * numel
        except Exception as exc:
            records[name] = {"bench": "kernels_ema", "impl": name,
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            print(f"  {name}: skipped ({records[name]['error']})", flush=True)
    # The yardsticks. copy: as many bytes as one EMA update (read + write = 8 bytes/element);
    # add_: as many elements as parameters, 12 bytes each like the update.
    copy_numel = BYTES_PER_PARAM * numel // 8
    src = torch.randn(copy_numel, device=device)
    dst = torch.empty_like(src)
    a = torch.randn(numel, device=device)
    b = torch.randn(numel, device=device)
    fns["copy"], nbytes["copy"] = partial(dst.copy_, src), 8 * copy_numel
    fns["add_"], nbytes["add_"] = partial(a.add_, b), BYTES_PER_PARAM * numel
    print(f"  timing {', '.join(fns)} round-robin ...", flush=True)
    times, errors = interleaved_ms(fns, device, steps, warmup)
    for name in fns:
        records[name] = summarise(name, times[name], nbytes[name], errors.get(name))
    del src, dst, a, b, fns
    common.reset_memory(device)
    records = {n: records[n] for n in (*IMPLS, "copy", "add_") if n in records}

    cases: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    variant = f"r50-{label.lower()}" + (f"-t{torch.get_num_threads()}" if device.type == "cpu" else "")
    yardsticks = ("copy", "add_")
    copy_bw = records["copy"].get("gb_per_s")
    add_bw = records["add_"].get("gb_per_s")
    op_ms = (records.get("op") or {}).get("ms", {}).get("median")
    for name, r in records.items():
        r["config"] = config
        if copy_bw and r.get("gb_per_s") is not None:
            r["bw_over_copy"] = r["gb_per_s"] / copy_bw
        if add_bw and r.get("gb_per_s") is not None:
            r["bw_over_add"] = r["gb_per_s"] / add_bw
        ms = r.get("ms", {}).get("median")
        if op_ms and ms and name != "op" and name not in yardsticks:
            r["time_over_op"] = ms / op_ms
        cases[f"ema/{variant}/{name}"] = r
    for name, r in records.items():
        if name in yardsticks:
            continue
        if r.get("bw_over_copy") is not None:
            ratios[f"ema/{variant}/{name}_bw_over_copy"] = {
                "value": r["bw_over_copy"],
                "meaning": f"achieved bandwidth of {name} / copy bandwidth (target >= 0.8 for op)"}
        if r.get("bw_over_add") is not None:
            ratios[f"ema/{variant}/{name}_bw_over_add"] = {
                "value": r["bw_over_add"], "meaning": f"achieved bandwidth of {name} / in-place add_ bandwidth"}
        if r.get("time_over_op") is not None:
            ratios[f"ema/{variant}/{name}_over_op"] = {
                "value": r["time_over_op"], "meaning": f"time {name} / time op (speed-up of the op over {name})"}
    loop_ms = (records.get("loop") or {}).get("ms", {}).get("median")
    foreach_ms = (records.get("foreach") or {}).get("ms", {}).get("median")
    if loop_ms and foreach_ms:
        ratios[f"ema/{variant}/loop_over_foreach"] = {"value": loop_ms / foreach_ms,
                                                     "meaning": "time loop / time foreach"}

    print()
    print(f"[{label}] {info['name']}  torch {info['torch']}  threads {torch.get_num_threads()}")
    rows = [{"impl": n, "ms": (r.get("ms") or {}).get("median"), "q1": (r.get("ms") or {}).get("q1"),
             "q3": (r.get("ms") or {}).get("q3"), "gbs": r.get("gb_per_s"), "bw": r.get("bw_over_copy"),
             "bw_add": r.get("bw_over_add"), "x_op": r.get("time_over_op"), "error": r.get("error")}
            for n, r in records.items()]
    print(common.format_table(rows, [("impl", "impl", ""), ("ms", "ms med", ".3f"), ("q1", "ms q1", ".3f"),
                                     ("q3", "ms q3", ".3f"), ("gbs", "GB/s", ".1f"), ("bw", "/ copy bw", ".2f"),
                                     ("bw_add", "/ add_ bw", ".2f"), ("x_op", "time / op", ".2f"),
                                     ("error", "error", "")]))
    common.report(ratios, args.out, info, {"kernels": cases, "ratios": ratios}, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
