"""Step throughput: images/s, ms/step (median, q1, q3) and peak memory per impl and shape.

    python -m bench.step [--shapes cifar,imagenet] [--impls vanilla,reference] [--steps N]
                         [--warmup N] [--batch-size N] [--out DIR] [--device auto|cpu|cuda]
                         [--amp/--no-amp] [--amp-dtype bf16|fp16] [--channels-last]

Impls (the ``IMPLS`` registry; adding one, e.g. ``fused``, is one builder function):
  vanilla            plain cross-entropy training of the same backbone (head_one, the shape's
                     optimizer: SGD, or the recipe's AdamW and clipping) - the floor
  vanilla_compiled   the same, compiled the way the fused step is (the fair floor of the fused steps)
  reference          ``ReferenceStep`` on an ``AdAutoMix`` model: the eager AdAutoMix step
  fused              AdAutoMix's fused step (fused_separate: three student passes)
  fused_<method>     the fused step of --method <method>: every baseline and AutoMix
Every impl of a shape sees the same synthetic batch, created once on the device, so only the
step is timed. Each speed figure is also reported as a ratio measured in this process
(``<impl>_over_vanilla`` step-time ratios, and ``reference_over_<impl>`` speed-ups).
Benchmarks never assert; a case that raises (out of memory, say) is recorded with its error.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

if __package__ in (None, ""):  # `python bench/step.py` as well as -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

from adautomix_fast.config import PRESETS, Config, resolve
from adautomix_fast.methods.generator import resolve_gen_kernels
from adautomix_fast.models import arch_spec, build_classifier, drop_path_rate
from adautomix_fast.registry import METHODS, build_model
from adautomix_fast.step.build import build_step
from adautomix_fast.step.optim import InGraphOptimizer, build_optimizer, no_weight_decay, wd_exclude
from adautomix_fast.step.precision import Precision
from adautomix_fast.step.schedules import Schedule
from bench import common

# The two shapes of docs/benchmarks.md, and the Swin-T (224 px) and CIFAR ConvNeXt-T
# (32 px, 3x3 stride-1 stem). `dataset` picks the published defaults in resolve(); `recipe` names
# the preset whose optimizer recipe (AdamW, weight-decay exclusions, warm-up, clipping, label
# smoothing, the generator's settings) every impl of the shape uses, vanilla included;
# mix_samples / lam_concat / gen_norm are repeated so the shape is readable here. CPU sizes keep
# `python -m bench.step` to minutes on 2 cores (compiling a fused step for the CPU takes longer,
# once); their results are labelled CPU.
SHAPES: dict[str, dict[str, Any]] = {
    "cifar": dict(dataset="cifar100", arch="r18", cifar_stem=True, image_size=32, num_classes=100,
                  mix_samples=3, lam_concat=False, gen_norm=False, train_images=50_000,
                  gpu=dict(batch_size=100, steps=30, warmup=5),
                  cpu=dict(batch_size=100, steps=5, warmup=1)),
    "imagenet": dict(dataset="imagenet", arch="r50", cifar_stem=False, image_size=224,
                     num_classes=1000, mix_samples=2, lam_concat=True, gen_norm=True,
                     train_images=1_281_167,
                     gpu=dict(batch_size=256, steps=20, warmup=5),
                     cpu=dict(batch_size=8, steps=3, warmup=1)),
    # The generic path on the same network: timm's ResNet-50, its stages read from the model.
    "imagenet-timm": dict(dataset="imagenet", arch="timm/resnet50", cifar_stem=False, image_size=224,
                          num_classes=1000, mix_samples=2, lam_concat=True, gen_norm=True,
                          train_images=1_281_167,
                          gpu=dict(batch_size=256, steps=20, warmup=5),
                          cpu=dict(batch_size=8, steps=3, warmup=1)),
    "swin": dict(dataset="cifar100", arch="swin_t", cifar_stem=False, image_size=224, num_classes=100,
                 mix_samples=3, lam_concat=True, gen_norm=False, train_images=50_000, recipe="cifar100-swin_t",
                 gpu=dict(batch_size=100, steps=20, warmup=5),
                 cpu=dict(batch_size=4, steps=3, warmup=1)),
    "convnext-cifar": dict(dataset="cifar100", arch="convnext_t", cifar_stem=True, image_size=32, num_classes=100,
                           mix_samples=3, lam_concat=True, gen_norm=False, train_images=50_000,
                           recipe="cifar100-convnext_t",
                           gpu=dict(batch_size=100, steps=30, warmup=5),
                           cpu=dict(batch_size=16, steps=3, warmup=1)),
}

# What a shape takes from its recipe preset: the optimisation and the method's settings, not the
# data, the sizes (the shape's own) or the drop-path rate (the architecture's published one, so
# that the hidden --arch override of a test network keeps a valid config).
_NOT_FROM_RECIPE = ("dataset", "arch", "img_size", "cifar_stem", "epochs", "batch_size", "drop_path", "randaugment",
                    "train_crop", "crop_scale", "interpolation", "upsample", "lam_concat", "mix_samples")


@dataclass
class Case:
    """One shape at one size and precision on one device, with its synthetic batch."""

    shape: str
    arch: str
    cifar_stem: bool
    image_size: int
    num_classes: int
    batch_size: int
    device: torch.device
    amp: bool
    amp_dtype: str
    channels_last: bool
    settings: dict[str, Any]
    x: Optional[torch.Tensor] = None
    y: Optional[torch.Tensor] = None

    @property
    def precision_label(self) -> str:
        return self.amp_dtype if self.amp else "fp32"

    @property
    def variant(self) -> str:
        """Part of the results key: what makes two runs of a shape comparable."""
        cl = "-cl" if self.channels_last else ""
        return f"{self.arch}-{self.image_size}px-b{self.batch_size}-{self.precision_label}{cl}"

    def config(self, method: str = "adautomix") -> Config:
        """The Config of this shape for ``method`` (published settings + the benchmark's sizes;
        AdAutoMix's N, lambda channel and generator BN as the shape states them)."""
        s = self.settings
        values = {}
        if s.get("recipe"):
            values.update({k: v for k, v in PRESETS[s["recipe"]].items() if k not in _NOT_FROM_RECIPE})
        values.update(dataset=s["dataset"], arch=self.arch, img_size=self.image_size, cifar_stem=self.cifar_stem,
                      batch_size=self.batch_size, amp=self.amp, amp_dtype=self.amp_dtype,
                      channels_last=self.channels_last, device=str(self.device), method=method)
        if method == "adautomix":
            values.update(mix_samples=s["mix_samples"], lam_concat=s["lam_concat"], gen_norm=s["gen_norm"])
        return resolve(values)

    def steps_per_epoch(self) -> int:
        # Real epoch length, so the per-epoch lr and the EMA momentum schedules are realistic.
        return max(self.settings["train_images"] // self.batch_size, 1)

    def make_data(self) -> None:
        g = torch.Generator(device=self.device).manual_seed(0)
        x = torch.randn(self.batch_size, 3, self.image_size, self.image_size, device=self.device, generator=g)
        self.x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        self.y = torch.randint(0, self.num_classes, (self.batch_size,), device=self.device, generator=g)


StepFn = Callable[[], torch.Tensor]


# ---------------------------------------------------------------------------- impls
def _vanilla_model(case: Case):
    """(config, the Classifier in train mode, the parameters plain training updates)."""
    cfg = case.config()
    model = build_classifier(case.arch, case.num_classes, case.cifar_stem,
                       drop_path=drop_path_rate(case.arch, cfg.drop_path)).to(case.device)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    # head_mix is unused here; leaving it out keeps the optimizer's foreach lists to what trains.
    params = [p for n, p in model.named_parameters() if not n.startswith("head_mix.")]
    return cfg, model, params


def _vanilla_optimizer(cfg, model, params) -> torch.optim.Optimizer:
    """The shape's optimizer over the classifier: SGD momentum 0.9 wd 1e-4 (the ResNet shapes), or
    the recipe's AdamW with its weight-decay exclusions (Swin, ConvNeXt)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4, foreach=True)
    names = {id(p): n for n, p in model.named_parameters()}
    extra = arch_spec(cfg.arch).no_decay
    skip = [p for p in params if wd_exclude(cfg) and no_weight_decay(names[id(p)], p, extra)]
    skip_ids = {id(p) for p in skip}
    groups = [{"params": [p for p in params if id(p) not in skip_ids]}]
    if skip:
        groups.append({"params": skip, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, foreach=True)


def build_vanilla(case: Case) -> StepFn:
    """Cross-entropy on head_one of the same Classifier with the shape's optimizer (SGD momentum 0.9
    wd 1e-4; or the recipe's AdamW, clipping and label smoothing): the floor."""
    cfg, model, params = _vanilla_model(case)
    opt = _vanilla_optimizer(cfg, model, params)
    precision = Precision.from_config(cfg, case.device)
    scaler = precision.make_scaler()
    x, y = case.x, case.y

    def step() -> torch.Tensor:
        with precision.autocast():  # same autocast scope as ReferenceStep (loss included)
            loss = F.cross_entropy(model.head_one(model.pooled(x)).float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.clip_grad is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad, foreach=True)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            if cfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad, foreach=True)
            opt.step()
        return loss.detach()

    return step


def _build_adautomix(case: Case, impl: str, student_passes: str = "batched", method: str = "adautomix") -> StepFn:
    """A ReferenceStep or FusedStep of ``method``, built as adautomix_fast.train builds it."""
    cfg = case.config(method)
    cfg.student_passes = student_passes
    model = build_model(cfg, case.num_classes, case.cifar_stem).to(case.device)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "generator"):
        model.generator.kernels = resolve_gen_kernels("auto", impl, case.device)
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(cfg, steps_per_epoch=case.steps_per_epoch())
    step = build_step(impl, model, optimizer, schedule, Precision.from_config(cfg, case.device), cfg, case.device)
    x, y = case.x, case.y
    return lambda: step(x, y)["loss"]


def build_reference(case: Case) -> StepFn:
    """The eager reference step."""
    return _build_adautomix(case, "reference")


def build_vanilla_compiled(case: Case) -> StepFn:
    """The vanilla step compiled the way the fused step is: forward, torch.autograd.grad and a
    foreach optimizer update (SGD; or the recipe's AdamW and clipping, in-graph as the fused step
    runs them) in one fullgraph torch.compile (CUDA graphs on a GPU). The fair floor for the
    fused step's cost ratio (docs/benchmarks.md, Targets)."""
    cfg, model, params = _vanilla_model(case)
    precision = Precision.from_config(cfg, case.device)
    x, y = case.x, case.y
    if precision.dtype is torch.float16:
        raise ValueError("vanilla_compiled has no loss scaling: use bf16 or fp32")
    if cfg.optimizer == "sgd":
        bufs = [torch.zeros_like(p) for p in params]
        lr = torch.tensor(cfg.lr, device=case.device)
        static = [lr, *bufs]

        def update(grads):
            torch._foreach_add_(grads, params, alpha=1e-4)
            torch._foreach_mul_(bufs, 0.9)
            torch._foreach_add_(bufs, grads)
            torch._foreach_sub_(params, torch._foreach_mul(bufs, lr))
    else:
        ig = InGraphOptimizer(_vanilla_optimizer(cfg, model, params), cfg.clip_grad)
        ig.bind()
        params = ig.params()
        ok = torch.ones((), dtype=torch.bool, device=case.device)   # the floor has no non-finite check
        keep = ok.to(torch.float32)
        static = ig.static_tensors()

        def update(grads):
            ig.step(grads, ok, keep)

    def body(x, y):
        with precision.autocast():
            loss = F.cross_entropy(model.head_one(model.pooled(x)).float(), y, label_smoothing=cfg.label_smoothing)
        grads = list(torch.autograd.grad(loss, params))
        with torch.no_grad():
            update(grads)
        return loss.detach()

    torch._dynamo.config.trace_autograd_ops = True
    mode = "reduce-overhead" if case.device.type == "cuda" else None
    if case.device.type == "cuda":
        for t in static:
            torch._dynamo.mark_static_address(t)
    compiled = torch.compile(body, fullgraph=True, dynamic=False, mode=mode)

    def step() -> torch.Tensor:
        if case.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(x, y).clone()

    return step


def build_fused(case: Case) -> StepFn:
    """The fused, compiled step (CUDA graphs on a GPU), student passes batched [3B]."""
    return _build_adautomix(case, "fused", "batched")


def build_fused_separate(case: Case) -> StepFn:
    """The fused step with the three student passes kept separate (for the side-by-side)."""
    return _build_adautomix(case, "fused", "separate")


def build_method(method: str) -> Callable[[Case], StepFn]:
    """The fused step of another --method (the baselines, AutoMix), on the same shape."""
    def build(case: Case) -> StepFn:
        return _build_adautomix(case, "fused", method=method)
    build.__doc__ = f"The fused step of --method {method}."
    return build


# name -> builder; the ratios below pick new impls up by name. `fused_<method>`: the fused step
# of every other method (`fused` is AdAutoMix's).
IMPLS: dict[str, Callable[[Case], StepFn]] = {
    "vanilla": build_vanilla,
    "reference": build_reference,
    "vanilla_compiled": build_vanilla_compiled,
    "fused": build_fused,
    "fused_separate": build_fused_separate,
    **{f"fused_{m}": build_method(m) for m in METHODS if m != "adautomix"},
}
METHOD_IMPLS = [f"fused_{m}" for m in METHODS if m != "adautomix"]


# ---------------------------------------------------------------------------- running
def run_case(case: Case, impl: str, steps: int, warmup: int) -> dict[str, Any]:
    """Build, time and measure one impl on one case; errors are recorded, never raised."""
    common.reset_memory(case.device)
    torch.manual_seed(0)  # the same initial weights for every impl
    record: dict[str, Any] = {
        "bench": "step", "shape": case.shape, "impl": impl, "variant": case.variant,
        "device_kind": "GPU" if case.device.type == "cuda" else "CPU",
        "config": {"arch": case.arch, "cifar_stem": case.cifar_stem, "image_size": case.image_size,
                   "num_classes": case.num_classes, "batch_size": case.batch_size,
                   "mix_samples": case.settings["mix_samples"], "lam_concat": case.settings["lam_concat"],
                   "gen_norm": case.settings["gen_norm"], "precision": case.precision_label,
                   "channels_last": case.channels_last, "steps": steps, "warmup": warmup,
                   "steps_per_epoch": case.steps_per_epoch(),
                   "cudnn_benchmark": torch.backends.cudnn.benchmark,
                   "threads": torch.get_num_threads()},
        "error": None,
    }
    if impl != "vanilla":
        record["adautomix_config"] = case.config().to_dict()
    try:
        step = IMPLS[impl](case)
        t = common.time_steps(step, case.device, steps, warmup)
        record["step_ms"] = {k: t[k] for k in ("median", "q1", "q3", "iqr", "rounds")}
        record["wall_mean_ms"] = t["wall_mean_ms"]
        record["images_per_s"] = case.batch_size / (t["median"] / 1e3)
        record.update(common.peak_memory(case.device))
        del step
    except Exception as exc:  # OOM and friends: keep going, say what happened
        traceback.print_exc()
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    common.reset_memory(case.device)
    return record


def ratios_for(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Step-time ratios between impls of one shape and variant, measured in this process."""
    ms = {r["impl"]: r["step_ms"]["median"] for r in records if r.get("error") is None}
    out: dict[str, dict[str, Any]] = {}
    if not records:
        return out
    shape, variant = records[0]["shape"], records[0]["variant"]

    def add(num: str, den: str, meaning: str) -> None:
        if num in ms and den in ms and den != num and ms[den] > 0:
            out[f"step/{shape}/{variant}/{num}_over_{den}"] = {
                "shape": shape, "variant": variant, "numerator": num, "denominator": den,
                "value": ms[num] / ms[den], "meaning": meaning}

    for impl in ms:
        add(impl, "vanilla", f"step time {impl} / vanilla (cost of AdAutoMix over plain training)")
        if impl not in ("vanilla", "reference", "vanilla_compiled"):
            add("reference", impl, f"step time reference / {impl} (speed-up of {impl})")
        if impl in ("fused", "fused_separate"):
            add(impl, "vanilla_compiled", f"step time {impl} / vanilla compiled the same way (target: "
                "<= 4.0 cifar, <= 3.3 imagenet)")
        elif impl.startswith("fused_"):
            target = "target < 1 against AdAutoMix" if impl == "fused_automix" else "target <= 1.1 on a GPU"
            add(impl, "vanilla_compiled", f"step time {impl} / vanilla compiled the same way ({target} for the "
                "baselines)")
            add(impl, "fused", f"step time {impl} / AdAutoMix's fused step ({target})")
    add("fused_separate", "fused", "step time separate / batched student passes")
    return out


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="cifar,imagenet",
                   help=f"comma list of {', '.join(SHAPES)} (default: cifar,imagenet)")
    p.add_argument("--impls", default="vanilla,reference",
                   help=f"comma list of {', '.join(IMPLS)} (default: vanilla,reference)")
    p.add_argument("--steps", type=int, help="timed steps (default: 20-30 on GPU, 3-5 on CPU, per shape)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps (default: 5 on GPU, 1 on CPU)")
    p.add_argument("--batch-size", type=int, help="batch size for every shape (default: per shape, "
                   "cifar 100; imagenet 256 on GPU, 8 on CPU)")
    p.add_argument("--out", default="bench/results", help="folder of the results JSON (default: bench/results)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto: the GPU when present)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="autocast the step (default: off, fp32)")
    p.add_argument("--amp-dtype", default="bf16", choices=("bf16", "fp16"), help="autocast dtype (default: bf16)")
    p.add_argument("--channels-last", action="store_true", help="channels-last models and data (default: off)")
    p.add_argument("--no-write", action="store_true", help="print the table only (default: write the JSON)")
    # Hidden overrides for tests and quick smokes: a tiny network keeps a whole run to seconds.
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--num-classes", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        p.error("--steps must be >= 1 and --warmup >= 0")
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.impls = [s for s in args.impls.split(",") if s]
    for name, known, flag in ((args.shapes, SHAPES, "--shapes"), (args.impls, IMPLS, "--impls")):
        bad = [n for n in name if n not in known]
        if bad:
            p.error(f"{flag}: unknown {bad}; choose from {', '.join(known)}")
    return args


def case_for(shape: str, device: torch.device, *, batch_size: Optional[int] = None, arch: Optional[str] = None,
             image_size: Optional[int] = None, num_classes: Optional[int] = None, amp: bool = False,
             amp_dtype: str = "bf16", channels_last: bool = False) -> Case:
    """One shape on ``device`` at the device's default sizes, with optional overrides (the CLI's
    flags and the pytest-benchmark suite's sizes)."""
    s = SHAPES[shape]
    sizes = s["gpu" if device.type == "cuda" else "cpu"]
    return Case(shape=shape, arch=arch or s["arch"], cifar_stem=s["cifar_stem"],
                image_size=image_size or s["image_size"], num_classes=num_classes or s["num_classes"],
                batch_size=batch_size or sizes["batch_size"], device=device, amp=amp, amp_dtype=amp_dtype,
                channels_last=channels_last, settings=s)


def make_case(shape: str, args: argparse.Namespace, device: torch.device) -> tuple[Case, int, int]:
    sizes = SHAPES[shape]["gpu" if device.type == "cuda" else "cpu"]
    case = case_for(shape, device, batch_size=args.batch_size, arch=args.arch, image_size=args.image_size,
                    num_classes=args.num_classes, amp=args.amp, amp_dtype=args.amp_dtype,
                    channels_last=args.channels_last)
    steps = args.steps if args.steps is not None else sizes["steps"]
    warmup = args.warmup if args.warmup is not None else sizes["warmup"]
    return case, steps, warmup


COLUMNS = [("shape", "shape", ""), ("impl", "impl", ""), ("device_kind", "dev", ""),
           ("variant", "variant", ""), ("images_per_s", "img/s", ".1f"), ("ms_median", "ms med", ".1f"),
           ("ms_q1", "ms q1", ".1f"), ("ms_q3", "ms q3", ".1f"), ("peak_memory_mib", "peak MiB", ".0f"),
           ("over_vanilla", "x vanilla", ".2f"), ("error", "error", "")]


def table_rows(cases: dict[str, Any], ratios: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, r in cases.items():
        ms = r.get("step_ms") or {}
        ratio = ratios.get(f"step/{r['shape']}/{r['variant']}/{r['impl']}_over_vanilla", {}).get("value")
        rows.append({**r, "ms_median": ms.get("median"), "ms_q1": ms.get("q1"), "ms_q3": ms.get("q3"),
                     "over_vanilla": ratio})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    if device.type == "cuda":
        # Tuned convolutions, as a training run would use them; warm-up absorbs the autotuning.
        torch.backends.cudnn.benchmark = True
    info = common.device_info(device)
    label = "CPU" if info["kind"] == "CPU" else "GPU"
    print(f"bench.step on {label}: {info['name']}  (torch {info['torch']}, triton {info['triton']}, "
          f"cuda {info['cuda']}, driver {info['driver']}, threads {torch.get_num_threads()})", flush=True)

    cases: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    failed = False
    for shape in args.shapes:
        case, steps, warmup = make_case(shape, args, device)
        case.make_data()
        if steps < 20:
            print(f"  note: {shape}: {steps} timed steps (< 20): a {label} smoke-sized measurement", flush=True)
        records = []
        for impl in args.impls:
            print(f"  {shape} {case.variant} {impl}: {warmup} warm-up + {steps} timed steps ...", flush=True)
            r = run_case(case, impl, steps, warmup)
            failed |= r["error"] is not None
            cases[f"step/{shape}/{case.variant}/{impl}"] = r
            records.append(r)
        ratios.update(ratios_for(records))
        case.x = case.y = None

    print()
    print(f"[{label}] {info['name']}")
    print(common.format_table(table_rows(cases, ratios), COLUMNS))
    common.report(ratios, args.out, info, {"cases": cases, "ratios": ratios}, write=not args.no_write)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
