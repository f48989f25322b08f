"""What AdAutoMix's generator learns on real CIFAR-10, epoch by epoch (docs/algorithm.md, "What the
generator learns"). Not part of the package: a study script, run by hand.

    .venv/bin/python tools/generator_study.py --data cifar10-jpeg --arch resnet20 \
        --train 5000 --epochs 6 --out study.json [--gen-init std0.01|kaiming] [--ema 0.99,0.999]

Trains the engine's reference step (the released step) on a class-balanced subset of the JPEG
class folders (pad-4 crop and flip, CIFAR statistics), and after every epoch measures, on a fixed
batch of test images with a fixed plan:

* mask_spread, mask_lambda_gap (the trainer's statistics, `generator.mask_statistics`);
* the attention's sharpness: mean normalised entropy of its rows (1 = uniform), the std of its
  logits q.k/sqrt(d), and the std over positions of the value map v;
* each generator weight's movement ||W - W_0|| / ||W_0||;
* per parameter, the mean gradient norm over the epoch's adversarial and cooperative steps;
* the four heads' top-1 on the test subset.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from adautomix_fast.config import resolve  # noqa: E402
from adautomix_fast.methods.adautomix import AdAutoMix  # noqa: E402
from adautomix_fast.methods.generator import cross_attention_mask_reference, mask_statistics  # noqa: E402
from adautomix_fast.step.base import make_plan_generator  # noqa: E402
from adautomix_fast.step.optim import build_optimizer  # noqa: E402
from adautomix_fast.step.precision import Precision  # noqa: E402
from adautomix_fast.step.reference import ReferenceStep  # noqa: E402
from adautomix_fast.step.schedules import Schedule  # noqa: E402

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def load_split(root: str, split: str, per_class: int, cache: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,3,32,32] and labels: the first ``per_class`` images of every class folder."""
    if os.path.exists(cache):
        d = torch.load(cache)
        return d["x"], d["y"]
    classes = sorted(os.listdir(os.path.join(root, split)))
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted(os.listdir(os.path.join(root, split, name)))[:per_class]
        for f in files:
            with Image.open(os.path.join(root, split, name, f)) as im:
                xs.append(np.asarray(im.convert("RGB")))
            ys.append(label)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(ys)
    torch.save({"x": x, "y": y}, cache)
    return x, y


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 255.0 - MEAN) / STD


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Pad-4 random crop and horizontal flip, per image."""
    b = x.shape[0]
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (b,), generator=g)
    dy = torch.randint(0, 9, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        crop = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


@torch.no_grad()
def attention_probe(model: AdAutoMix, x: torch.Tensor, plan) -> dict:
    """Sharpness of G's attention on the fixed batch, in eval mode (as the trainer's statistics)."""
    was = (model.teacher.training, model.generator.training)
    model.teacher.eval()
    model.generator.eval()
    try:
        gen = model.generator
        f3 = model.teacher.tap_features(model.teacher.stem_to_stage3(x))
        q, k, v = gen.project(gen.slot_inputs(f3, plan.index_gen, plan.lam_gen))
        k_others = k.sum(0, keepdim=True) - k
        logits = torch.matmul(q, k_others.transpose(-1, -2)) * gen.dim ** -0.5
        attn = logits.softmax(-1)
        p = attn.shape[-1]
        entropy = -(attn * attn.clamp_min(1e-30).log()).sum(-1) / math.log(p)
        m = cross_attention_mask_reference(q, k, v, scale=gen.dim ** -0.5)       # [N,B,P]
        return {"attn_entropy": float(entropy.mean()), "attn_logit_std": float(logits.std(-1).mean()),
                "value_spatial_std": float(v.std(-1).mean()), "logit_spatial_std": float(m.std(-1).mean()),
                "q_norm": float(q.norm(dim=-1).mean()), "k_norm": float(k.norm(dim=-1).mean()),
                "tap": list(f3.shape[1:])}
    finally:
        model.teacher.train(was[0])
        model.generator.train(was[1])


@torch.no_grad()
def train_mode_statistics(model: AdAutoMix, x: torch.Tensor, plan) -> dict:
    """The mask statistics with the teacher in train mode (batch statistics, as the step sees its
    features), on a copy so that no running statistic of the trained model changes."""
    twin = copy.deepcopy(model).train()
    f3 = twin.teacher.tap_features(twin.teacher.stem_to_stage3(x))
    m = twin.generator.mask_logits(f3, plan.index_gen, plan.lam_gen)
    _, masks = twin.generator.mix(m, x, plan.index_gen, return_masks=True)
    return {f"train_mode_{k}": v for k, v in mask_statistics(masks, plan.lam_gen).items()}


@torch.no_grad()
def accuracy(model: AdAutoMix, x: torch.Tensor, y: torch.Tensor) -> dict:
    model.eval()
    out = {}
    for i in range(0, x.shape[0], 500):
        logits = model.eval_logits(x[i:i + 500])
        for h, z in logits.items():
            out[h] = out.get(h, 0) + int((z.argmax(1) == y[i:i + 500]).sum())
    model.train()
    return {h: 100.0 * c / x.shape[0] for h, c in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="CIFAR-10 as class folders: train/<class>/, test/<class>/")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--ema", default="0.99,0.999", help="EMA momentum start,end (short runs: docs/algorithm.md)")
    ap.add_argument("--gen-init", default="std0.01", help="std0.01 (published) | kaiming (mmcv ConvModule's default)")
    ap.add_argument("--gen-objective", default="alternate")
    ap.add_argument("--lam-concat", action="store_true", help="give G the lambda channel (the paper's G(X, lambda))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x_train, y_train = load_split(args.data, "train", args.train // 10,
                                  os.path.join(tempfile.gettempdir(), f"cifar_train_{args.train}.pt"))
    x_test, y_test = load_split(args.data, "test", args.test // 10,
                                os.path.join(tempfile.gettempdir(), f"cifar_test_{args.test}.pt"))
    x_test = normalise(x_test)
    ema_start, ema_end = (float(v) for v in args.ema.split(","))
    cfg = resolve(dict(dataset="cifar10", arch=args.arch, method="adautomix", epochs=args.epochs,
                       batch_size=args.batch, lr=args.lr, amp=False, ema_start=ema_start, ema_end=ema_end,
                       gen_objective=args.gen_objective, lam_concat=args.lam_concat, seed=args.seed))
    torch.manual_seed(args.seed)
    model = AdAutoMix.from_config(cfg, 10, cifar_stem=True)
    if args.gen_init == "kaiming":
        for name in ("query", "key"):
            torch.nn.init.kaiming_normal_(getattr(model.generator, name)[0].weight, mode="fan_out", nonlinearity="relu")
    elif args.gen_init != "std0.01":
        raise SystemExit(f"unknown --gen-init {args.gen_init}")
    opt = build_optimizer(model, cfg)
    steps_per_epoch = args.train // args.batch
    schedule = Schedule(cfg, steps_per_epoch=steps_per_epoch)
    step = ReferenceStep(model, opt, schedule, Precision.from_config(cfg, torch.device("cpu")),
                         plan_generator=make_plan_generator(torch.device("cpu"), args.seed))
    gen_params = dict(model.generator.named_parameters())
    w0 = {n: p.detach().clone() for n, p in gen_params.items()}
    fixed_x, fixed_y = x_test[:128], y_test[:128]
    fixed_plan = model.sample_plan(128, generator=torch.Generator().manual_seed(args.seed * 1000))

    def measure(epoch: int, grads: dict, secs: float, train_loss: float) -> dict:
        rec = {"epoch": epoch, "step": int(model.num_updates), "secs": secs, "train_loss": train_loss}
        rec.update(model.mask_diagnostics(fixed_x, fixed_y, fixed_plan))
        rec.update(attention_probe(model, fixed_x, fixed_plan))
        rec.update(train_mode_statistics(model, fixed_x, fixed_plan))
        rec["rel_move"] = {n: float((p.detach() - w0[n]).norm() / w0[n].norm().clamp_min(1e-12))
                           for n, p in gen_params.items() if w0[n].norm() > 0}
        rec["norm"] = {n: float(p.detach().norm()) for n, p in gen_params.items()}
        rec["grad_norm"] = grads
        if epoch > 0:
            rec["top1"] = accuracy(model, x_test, y_test)
        return rec

    records = [measure(0, {}, 0.0, float("nan"))]
    print(json.dumps(records[-1]), flush=True)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    for epoch in range(args.epochs):
        t0 = time.time()
        order = torch.randperm(x_train.shape[0], generator=data_gen)
        sums = {"adversarial": {}, "cooperative": {}}
        counts = {"adversarial": 0, "cooperative": 0}
        loss_sum = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * args.batch:(s + 1) * args.batch]
            x = augment(normalise(x_train[idx]), data_gen)
            kind = "adversarial" if bool(model.adversarial()) else "cooperative"
            out = step(x, y_train[idx])
            loss_sum += float(out["loss"])
            counts[kind] += 1
            for n, p in gen_params.items():
                if p.grad is not None:
                    sums[kind][n] = sums[kind].get(n, 0.0) + float(p.grad.norm())
        grads = {kind: {n: v / max(counts[kind], 1) for n, v in sums[kind].items()} for kind in sums}
        records.append(measure(epoch + 1, grads, time.time() - t0, loss_sum / steps_per_epoch))
        print(json.dumps(records[-1]), flush=True)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
