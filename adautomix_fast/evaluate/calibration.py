"""The ``calibration`` suite: expected calibration error and the reliability diagram (Fig. 4, Table 6).

Softmax of the chosen head on the clean test images; confidence = the largest probability;
10 equal-width bins. ECE = sum over bins of (count / total) * |accuracy - mean confidence|, in %.

Protocols (docs/evaluation.md, What each suite computes):

* ``correct``: torchmetrics' ``multiclass_calibration_error`` with 10 bins (its default is 15).
  torchmetrics closes its bins on the left ([m/10, (m+1)/10)); the diagram's bins below follow the
  released tool's right-closed rule (m/10 < conf <= (m+1)/10). The two differ only for
  confidences lying exactly on a bin edge.
* ``official``: the released tool's computation, which sorts the per-bin accuracies and the
  per-bin confidences *independently* (empty bins as zeros) before pairing them with the
  unsorted bin counts. It equals the correct ECE only when accuracy rises with confidence and
  no bin is empty (empty bins sort as zeros and shift the pairing).

Hand-written: ``reliability_bins`` (torchmetrics does not return its per-bin statistics, and
the diagram and the official protocol need them) and ``ece_official`` (the bug itself).
"""

from __future__ import annotations

import torch

N_BINS = 10


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS) -> dict:
    """Per-bin count, accuracy and mean confidence with bins m/n < conf <= (m+1)/n (bin 0 also
    takes conf == 0). confidence: [N] float in [0, 1]; correct: [N] bool. Empty bins have
    accuracy and confidence 0 (as the released tool leaves them)."""
    confidence = confidence.double().cpu()
    correct = correct.double().cpu()
    # Edges m/n as the released tool computes them; bucketize(right=False) gives i with
    # edges[i-1] < conf <= edges[i], i.e. bin i - 1.
    edges = torch.tensor([m / n_bins for m in range(n_bins + 1)], dtype=torch.double)
    index = (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.double).index_add_(0, index, torch.ones_like(confidence))
    hits = torch.zeros(n_bins, dtype=torch.double).index_add_(0, index, correct)
    conf_sum = torch.zeros(n_bins, dtype=torch.double).index_add_(0, index, confidence)
    safe = count.clamp_min(1)
    return {
        "edges": [m / n_bins for m in range(n_bins + 1)],
        "count": [int(c) for c in count.tolist()],
        "accuracy": (hits / safe).tolist(),
        "confidence": (conf_sum / safe).tolist(),
    }


def ece_from_bins(bins: dict) -> float:
    """ECE (%) of the bins as they are (the correct pairing)."""
    total = sum(bins["count"])
    return 100.0 * sum(c * abs(a - f)
                       for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"])) / max(total, 1)


def ece_official(bins: dict) -> float:
    """ECE (%) as the released tool computes it: accuracies and confidences sorted independently,
    then paired with the unsorted counts (reproduces the bug on purpose)."""
    acc = sorted(bins["accuracy"])
    conf = sorted(bins["confidence"])
    total = sum(bins["count"])
    return 100.0 * sum(c * abs(a - f) for c, a, f in zip(bins["count"], acc, conf)) / max(total, 1)


def ece_torchmetrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> float:
    """ECE (%) by torchmetrics (L1 norm, equal-width bins). probs: [N,C] softmax; labels: [N]."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    value = multiclass_calibration_error(probs.float(), labels.long(), num_classes=probs.shape[1],
                                         n_bins=n_bins, norm="l1")
    return 100.0 * float(value)


def calibration_from_probs(probs: torch.Tensor, labels: torch.Tensor, protocol: str = "correct",
                           n_bins: int = N_BINS) -> dict:
    """Every calibration number from softmax probabilities [N,C] and labels [N]."""
    confidence, pred = probs.max(dim=1)
    correct = pred.eq(labels)
    bins = reliability_bins(confidence, correct, n_bins)
    correct_ece = ece_torchmetrics(probs, labels, n_bins)
    official = ece_official(bins)
    return {
        "protocol": protocol,
        "n_bins": n_bins,
        "ece": correct_ece if protocol == "correct" else official,
        "ece_correct": correct_ece,
        "ece_official": official,
        "top1": 100.0 * float(correct.double().mean()) if len(labels) else 0.0,
        "mean_confidence": 100.0 * float(confidence.double().mean()) if len(labels) else 0.0,
        "images": int(len(labels)),
        "bins": bins,
    }


@torch.no_grad()
def run(ctx) -> dict:
    """Softmax of the chosen head over the context's images -> calibration numbers."""
    probs, labels = [], []
    for _, x, y in ctx.batches("calibration"):
        probs.append(ctx.logits(x).softmax(dim=1).cpu())
        labels.append(y.cpu())
    return calibration_from_probs(torch.cat(probs), torch.cat(labels), ctx.options.protocol)
