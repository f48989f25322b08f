"""Prints the golden values of tests/test_ablations.py::test_defaults_reproduce_the_golden_step:
the losses of 3 reference and 3 eager fused AdAutoMix steps (N = 2 and N = 3) with the default
switches, and a checksum of the state dict afterwards, as JSON.

Portable by construction, so that every CPU computes the same values up to float64 rounding:

* the model and the data are float64 (the engine's fp32 regions keep float64 inputs as they are,
  and a float64 teacher is updated by the EMA op's PyTorch twin), so the CPU's fp32 kernels
  (oneDNN's AVX2, AVX-512 or AMX convolutions, MKL's sgemm blocking) take no part;
* the weights are drawn with ``torch.rand`` on a seeded generator in float64 (a scalar loop on
  every CPU) instead of the library initialisers, whose ``normal_`` runs a vectorised fp32
  Box-Muller whose last bits depend on the CPU's vector width;
* one thread and deterministic algorithms, so reductions run in one order.

What differs between CPUs then is only the order of float64 sums inside BLAS and vectorised
reductions: measured at most 1.8e-15 relative (AVX2, AVX-512 and ATen's unvectorised default
kernels), far below the test's tolerance.
"""

import json

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from adautomix_fast.config import resolve  # noqa: E402
from adautomix_fast.methods.adautomix import AdAutoMix  # noqa: E402
from adautomix_fast.step.base import make_plan_generator  # noqa: E402
from adautomix_fast.step.fused import FusedStep  # noqa: E402
from adautomix_fast.step.optim import build_optimizer  # noqa: E402
from adautomix_fast.step.precision import Precision  # noqa: E402
from adautomix_fast.step.reference import ReferenceStep  # noqa: E402
from adautomix_fast.step.schedules import Schedule  # noqa: E402


@torch.no_grad()
def portable_init_(model: AdAutoMix) -> None:
    """Uniform weights of the initialisers' scale (He for the trunk, 0.01 for the generator)
    drawn in float64 by the scalar uniform kernel; biases and norms keep their exact constants;
    the teacher copies the student, as at construction."""
    g = torch.Generator().manual_seed(0)
    for net, std in ((model.student, None), (model.generator, 0.01)):
        for p in net.parameters():
            if p.dim() > 1:
                scale = std if std is not None else (2.0 / p[0].numel()) ** 0.5
                p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * scale * 3 ** 0.5)
    model.teacher.load_state_dict(model.student.state_dict())


def run(n: int, impl: str) -> dict:
    cfg = resolve(dict(dataset="digits", arch="tiny", mix_samples=n, batch_size=8, epochs=2, amp=False,
                       lam_concat=(n == 2), gen_norm=(n == 2)))
    torch.manual_seed(0)
    model = AdAutoMix.from_config(cfg, 10, cifar_stem=True).double()
    portable_init_(model)
    opt = build_optimizer(model, cfg)
    schedule = Schedule(cfg, steps_per_epoch=3)
    precision = Precision.from_config(cfg, torch.device("cpu"))
    if impl == "reference":
        step = ReferenceStep(model, opt, schedule, precision,
                             plan_generator=make_plan_generator(torch.device("cpu"), 0))
    else:
        step = FusedStep(model, opt, schedule, precision, compile=False)
    g = torch.Generator().manual_seed(5)
    steps = []
    for i in range(3):
        x = torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (8,), generator=g)
        if impl == "fused":
            torch.manual_seed(100 + i)
        steps.append({k: float(v) for k, v in step(x, y).items()})
    state = [t for t in model.state_dict().values() if t.is_floating_point()]
    assert all(t.dtype == torch.float64 for t in state), "a state tensor left float64"
    return {"steps": steps, "checksum": float(sum(t.sum() for t in state))}


if __name__ == "__main__":
    print(json.dumps({f"{impl}-n{n}": run(n, impl) for n in (2, 3) for impl in ("reference", "fused")}))
