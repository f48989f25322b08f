"""PuzzleMix here against OpenMixup's ``puzzlemix()`` on the same inputs and draws (a report, not a
test: it needs a copy of OpenMixup's ``openmixup/models/augments/puzzlemix.py``).

    python -m bench.puzzlemix_openmixup --openmixup-file /path/to/openmixup/models/augments/puzzlemix.py
    python -m bench.puzzlemix_openmixup --openmixup-file ... --peaked   # saliency with one dominant cell

OpenMixup's function runs on the CPU with its ``.cuda()`` calls made no-ops; its draws (alpha from
np.random.beta, torch.randperm, the grid from np.random.randint) are replayed with this engine's
values, and both get the same saliency map. Images are smooth random fields in [0, 1] normalised
with the statistics OpenMixup hard-codes for images under 64 px, which this engine is given too.
For each transport setting and grid, the report counts the samples whose lambda and whose mixed
image agree (|difference| <= 1e-5).
"""

from __future__ import annotations

import argparse
import importlib.util
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from adautomix_fast.methods import puzzlemix as pm

OPENMIXUP_MEAN, OPENMIXUP_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def load_openmixup(path: str):
    torch.Tensor.cuda = lambda self, *a, **k: self          # run the CUDA code on the CPU
    spec = importlib.util.spec_from_file_location("openmixup_puzzlemix", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def replayed(alpha: float, perm: torch.Tensor, exponent: int):
    saved = np.random.beta, torch.randperm, np.random.randint
    np.random.beta = lambda a, b: alpha
    torch.randperm = lambda n, *a, **k: perm.clone()
    np.random.randint = lambda low, high: exponent
    try:
        yield
    finally:
        np.random.beta, torch.randperm, np.random.randint = saved


def compare(om, seed: int, transport: str, batch: int, side: int, peaked: bool) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = pm.PuzzleMix("tiny", 10, cifar_stem=True, block_num=5, t_size=4, transport=transport,
                       mean=OPENMIXUP_MEAN, std=OPENMIXUP_STD)
    pixels = F.interpolate(torch.rand(batch, 3, side // 4, side // 4), size=side, mode="bilinear", align_corners=False)
    x = (pixels - torch.tensor(OPENMIXUP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENMIXUP_STD).view(1, 3, 1, 1)
    y = torch.randint(0, 10, (batch,))
    saliency = pm.input_saliency(net.student, x, y)
    if peaked:          # one 2 x 2 cell holding 2 % .. 40 % of each map
        share = torch.linspace(0.02, 0.4, batch)
        saliency[:, 10:12, 20:22] = (share * saliency.flatten(1).sum(1) / (1 - share) / 4)[:, None, None]
    real = pm.input_saliency
    pm.input_saliency = lambda *a, **k: saliency
    out = {}
    try:
        for exponent in range(1, 5):
            alpha, perm = float(rng.beta(1, 1)), torch.randperm(batch)
            with replayed(alpha, perm, exponent):
                img, (_, _, lam) = om.puzzlemix(x.clone(), y, alpha=1.0, features=saliency.clone(), block_num=5,
                                                beta=1.2, gamma=0.5, eta=0.2, neigh_size=4, n_labels=3, t_eps=0.8,
                                                t_size=4, transport=transport != "off", t_batch_size=None)
            empty = torch.empty(0)
            plan = net.complete_plan(x, y, pm.PuzzlePlan(torch.tensor(alpha), perm, torch.tensor(2 ** exponent),
                                                         empty, empty.long(), empty.long()))
            mixed, ours = net.mix(x, plan)
            out[2 ** exponent] = (int(torch.isclose(ours, lam, atol=1e-5).sum()),
                                  int(torch.isclose(mixed, img, atol=1e-5).flatten(1).all(1).sum()))
    finally:
        pm.input_saliency = real
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--openmixup-file", required=True, help="OpenMixup's openmixup/models/augments/puzzlemix.py")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--peaked", action="store_true", help="saliency with one cell of 2-40 %% of the map")
    args = p.parse_args(argv)
    om = load_openmixup(args.openmixup_file)
    for transport in ("off", "approx"):
        totals: dict[int, list[int]] = {}
        for seed in range(args.seeds):
            for grid, (same_lam, same_img) in compare(om, seed, transport, args.batch, 32, args.peaked).items():
                t = totals.setdefault(grid, [0, 0])
                t[0] += same_lam
                t[1] += same_img
        n = args.seeds * args.batch
        for grid, (same_lam, same_img) in sorted(totals.items()):
            print(f"transport {transport:6s} grid {grid:2d}: same lambda {same_lam}/{n}, "
                  f"same mixed image {same_img}/{n}")


if __name__ == "__main__":
    main()
