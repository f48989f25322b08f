"""Segmented BatchNorm: one forward over S stacked batches, each normalised by its own statistics.

The reference step runs the student three times (clean batch, pixel mixup, generated mix), each
pass with its own train-mode BatchNorm statistics. Convolutions, ReLU, pooling and the linear
heads act on each sample alone, so stacking the three batches into one [3B] batch is *exactly*
the three passes, provided BatchNorm computes its statistics per segment of B samples and applies
the three running-statistics updates in the original order (docs/algorithm.md, Fused
arrangement). The GPU then runs one set of larger kernels instead of three sets of smaller ones.

`SegmentedBatchNorm2d` is an `nn.BatchNorm2d` (same parameters, buffers and state-dict keys, so
checkpoints and the torchvision export do not change) whose train-mode forward splits the batch
into ``x.shape[0] // segment_size`` segments. The segment size is fixed once per model
(`set_segment_size`), so under torch.compile the number of segments is a trace-time constant of
the static input shape, never a value read from the device. Written with plain tensor ops so that
Inductor fuses the statistics, normalisation and update into a few kernels; it keeps the input's
memory format (channels-last stays channels-last).

It also keeps the batch statistics of its last train-mode forward (non-persistent buffers), so
the fused step can replay running-statistics updates without running a forward again
(`replay_running_stats`): the teacher's cosine-source passes on x[pi_i] have exactly the clean
batch's statistics, because BatchNorm statistics do not depend on the order of the samples.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn as nn

from .numerics import at_least_fp32


class SegmentedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with per-segment batch statistics in train mode.

    With ``segment_size`` None (or equal to the batch) it is an ordinary BatchNorm2d written in
    plain ops. In eval mode it uses the running statistics, as BatchNorm2d does.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=True, device=device, dtype=dtype)
        self.segment_size: Optional[int] = None
        self.register_buffer("last_mean", torch.zeros(num_features, device=device), persistent=False)
        self.register_buffer("last_var", torch.ones(num_features, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        size = self.segment_size or n
        if n % size:
            raise ValueError(f"SegmentedBatchNorm2d: batch {n} is not a multiple of the segment size {size}")
        segments = n // size
        xs = at_least_fp32(x).reshape(segments, size, c, h, w)
        mean = xs.mean(dim=(1, 3, 4))                                    # [S, C]
        var = xs.var(dim=(1, 3, 4), unbiased=False)                      # [S, C], biased: normalises
        inv_std = torch.rsqrt(var + self.eps)
        scale = inv_std if self.weight is None else inv_std * at_least_fp32(self.weight)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + at_least_fp32(self.bias)
        y = xs * scale[:, None, :, None, None] + shift[:, None, :, None, None]
        with torch.no_grad():
            count = size * h * w
            unbiased = var * (count / max(count - 1, 1))                 # running_var is unbiased
            for s in range(segments):                                    # in the order of the passes
                self._update_running(mean[s], unbiased[s])
            self.last_mean.copy_(mean[-1])
            self.last_var.copy_(unbiased[-1])
        return y.reshape(n, c, h, w).to(x.dtype)

    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:   # cumulative moving average, as nn.BatchNorm2d
            factor = 1.0 / self.num_batches_tracked.float()
        else:
            factor = self.momentum
        self.running_mean.mul_(1 - factor).add_(mean * factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var * factor)

    @torch.no_grad()
    def replay_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor, times: int) -> None:
        """Apply ``times`` more running-statistics updates with the given batch statistics, as if
        that many train-mode forwards on batches with these statistics had run."""
        for _ in range(times):
            self._update_running(mean, unbiased_var)


class SegmentedBatchNormAct2d(SegmentedBatchNorm2d):
    """timm's ``BatchNormAct2d`` (BatchNorm, then its ``drop`` and ``act`` modules, as timm's
    EfficientNets, MobileNets and RegNets use it) with per-segment statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def _is_batchnorm_act(module: nn.Module) -> bool:
    # timm's class, recognised by its shape (timm is optional): a BatchNorm2d with drop and act.
    return (isinstance(module, nn.BatchNorm2d) and isinstance(getattr(module, "drop", None), nn.Module)
            and isinstance(getattr(module, "act", None), nn.Module))


def unconverted_batchnorms(module: nn.Module) -> list[str]:
    """Names of the batch norms ``convert_batchnorm`` cannot convert (another class's forward)."""
    return [n for n, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, SegmentedBatchNorm2d)]


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d (and timm's BatchNormAct2d) in ``module`` by a
    SegmentedBatchNorm2d (SegmentedBatchNormAct2d), in place.

    The parameters and buffers are *moved*, not copied (the same Parameter objects), so an
    optimizer built before the conversion keeps working and the state dict is unchanged.
    """
    for name, child in list(module.named_children()):
        with_act = _is_batchnorm_act(child)
        if type(child) is nn.BatchNorm2d or with_act:
            cls = SegmentedBatchNormAct2d if with_act else SegmentedBatchNorm2d
            seg = cls(child.num_features, eps=child.eps, momentum=child.momentum,
                      affine=child.affine, device=child.running_mean.device)
            if with_act:
                seg.drop, seg.act = child.drop, child.act
            seg.weight, seg.bias = child.weight, child.bias
            seg.running_mean, seg.running_var = child.running_mean, child.running_var
            seg.num_batches_tracked = child.num_batches_tracked
            seg.train(child.training)
            setattr(module, name, seg)
        else:
            convert_batchnorm(child)
    return module


def segmented_norms(module: nn.Module) -> list[SegmentedBatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, SegmentedBatchNorm2d)]


def set_segment_size(module: nn.Module, size: Optional[int]) -> None:
    for m in segmented_norms(module):
        m.segment_size = size


def snapshot_batch_stats(norms: Iterable[SegmentedBatchNorm2d]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batch statistics of each norm's last train-mode forward (cloned)."""
    return [(m.last_mean.clone(), m.last_var.clone()) for m in norms]
