"""Prints the golden values of tests/test_ablations.py::test_defaults_are_bit_identical...: losses
(float.hex) of 3 reference and 3 eager fused AdAutoMix steps with the default switches, and a
float64 checksum of the state dict. One thread, so that reductions run in one fixed order."""

import json

import torch

torch.set_num_threads(1)

from adautomix_fast.adautomix import AdAutoMix  # noqa: E402
from adautomix_fast.config import resolve  # noqa: E402
from adautomix_fast.engine import Precision, ReferenceStep, Schedule, build_optimizer, make_plan_generator  # noqa: E402
from adautomix_fast.fused import FusedStep  # noqa: E402


def run(n: int, impl: str) -> dict:
    cfg = resolve(dict(dataset="digits", arch="tiny", mix_samples=n, batch_size=8, epochs=2, amp=False,
                       lam_concat=(n == 2), gen_norm=(n == 2)))
    torch.manual_seed(0)
    model = AdAutoMix.from_config(cfg, 10, cifar_stem=True)
    opt = build_optimizer(model, cfg)
    schedule = Schedule(cfg, steps_per_epoch=3)
    precision = Precision.from_config(cfg, torch.device("cpu"))
    if impl == "reference":
        step = ReferenceStep(model, opt, schedule, precision, plan_generator=make_plan_generator(torch.device("cpu"), 0))
    else:
        step = FusedStep(model, opt, schedule, precision, compile=False)
    g = torch.Generator().manual_seed(5)
    steps = []
    for i in range(3):
        x = torch.randn(8, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        if impl == "fused":
            torch.manual_seed(100 + i)
        steps.append({k: float(v).hex() for k, v in step(x, y).items()})
    checksum = float(sum(t.double().sum() for t in model.state_dict().values() if t.is_floating_point())).hex()
    return {"steps": steps, "checksum": checksum}


if __name__ == "__main__":
    print(json.dumps({f"{impl}-n{n}": run(n, impl) for n in (2, 3) for impl in ("reference", "fused")}))
