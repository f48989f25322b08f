"""The ``accuracy`` suite: top-1 / top-5 of every head (docs/algorithm.md, Evaluation heads).

Heads: for AdAutoMix teacher one/mix and student one/mix, in eval mode (BatchNorm running
statistics); other methods list their own in ``model.HEADS``. The headline number is the
teacher's ``head_one`` (``teacher_one``), as the paper reports it. Counts are accumulated on the
device and read once at the end, and every image of the loader is counted exactly once.

``evaluate`` is what the trainer calls every epoch; ``run`` is the suite of
``python -m adautomix_fast.evaluate`` (the same counts on the evaluation context's images).
"""

from __future__ import annotations

from typing import Iterable

import torch
from tqdm import tqdm

from ..runtime.distributed import all_reduce_sum_

# The AdAutoMix model's heads; a model lists its own in ``model.HEADS`` (its headline in
# ``model.HEADLINE``), and evaluation reports exactly those.
HEADS = ("teacher_one", "teacher_mix", "student_one", "student_mix")
HEADLINE = "teacher_one"


def topk_correct(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (clipped to C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices                  # [B, kmax]
    hit = top.eq(y.unsqueeze(1))
    return [hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(model, loader: Iterable, device: torch.device, precision=None, channels_last: bool = False,
             progress: bool = False, ctx=None) -> dict:
    """Returns {"images": n, "<head>_top1": %, "<head>_top5": %} for every head of ``model.HEADS``.

    Distributed (``ctx``): each rank counts its shard of the validation set and the counts are
    summed across ranks, so the result equals one process evaluating every image once.
    """
    heads = tuple(getattr(model, "HEADS", HEADS))
    was_training = model.training
    model.eval()
    counts = torch.zeros(len(heads), 2, dtype=torch.long, device=device)
    n = torch.zeros((), dtype=torch.long, device=device)
    iterator = loader
    if progress:
        iterator = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for x, y in iterator:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = precision.autocast() if precision is not None else torch.autocast(device.type, enabled=False)
        with autocast:
            logits = model.eval_logits(x, heads)
        for h, name in enumerate(heads):
            top1, top5 = topk_correct(logits[name].float(), y)
            counts[h, 0] += top1
            counts[h, 1] += top5
        n += y.shape[0]
    model.train(was_training)
    if ctx is not None and ctx.enabled:
        all_reduce_sum_(counts, ctx)
        all_reduce_sum_(n, ctx)
    counts, total = counts.cpu(), int(n)
    result: dict = {"images": total}
    for h, name in enumerate(heads):
        result[f"{name}_top1"] = 100.0 * int(counts[h, 0]) / max(total, 1)
        result[f"{name}_top5"] = 100.0 * int(counts[h, 1]) / max(total, 1)
    return result


@torch.no_grad()
def run(ctx) -> dict:
    """Top-1/top-5 (%) of every head of the model on the context's images (``--limit`` applies).

    Returns {"images": n, "heads": {head: {"top1", "top5"}}, "top1", "top5"} where the last two
    are the chosen head's (``ctx.head``).
    """
    heads = tuple(ctx.model.HEADS)
    counts = torch.zeros(len(heads), 2, dtype=torch.long, device=ctx.device)
    n = 0
    for _, x, y in ctx.batches("accuracy"):
        with ctx.autocast():
            logits = ctx.model.eval_logits(x, heads)
        for h, name in enumerate(heads):
            top1, top5 = topk_correct(logits[name].float(), y)
            counts[h, 0] += top1
            counts[h, 1] += top5
        n += y.shape[0]
    counts = counts.cpu()
    per_head = {name: {"top1": 100.0 * int(counts[h, 0]) / max(n, 1), "top5": 100.0 * int(counts[h, 1]) / max(n, 1)}
                for h, name in enumerate(heads)}
    return {"images": n, "heads": per_head, "top1": per_head[ctx.head]["top1"], "top5": per_head[ctx.head]["top5"]}
