"""Pictures of mixed samples during training: sources, masks as heat maps, the mixed images.

The trainer calls, every ``--vis-every`` epochs on the primary rank, outside the compiled step::

    vis = model.visualize(x, y, plan)                  # every method's own dict, or
    vis = mix_visual_from_adautomix(model, x)          # AdAutoMix's batch with train-mode statistics
    render_mix_grid(vis, os.path.join(run_dir, f"mix-epoch{epoch:04d}.png"), info.mean, info.std)

As in the released code, the picture shows the first samples of the generator-side batch,
one row per source, titled with the lambdas and de-normalised with the data set's statistics;
here the masks are shown too, one heat-map row per source (what users look at to see what the
generator learned). Methods without pixel masks (mixup) pass ``masks=None``: their scalar
weights are written on the source images instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..errors import UsageError
from . import plots


@dataclass
class MixVisual:
    """One picture's worth of a mixing method's batch (any device, any float dtype).

    sources: [N,K,C,H,W], the N source images of each of the K samples (normalised);
    masks: [K,N,H,W] pixel weights of each source (summing to 1 over N), or None for methods
        without pixel masks (mixup: the weights are the scalars ``lam``);
    mixed: [K,C,H,W], the mixed images (normalised);
    lam: [N] (shared by the batch) or [K,N] (per sample) mixing ratios;
    title: the picture's title (method, epoch, ...).
    """

    sources: torch.Tensor
    masks: Optional[torch.Tensor]
    mixed: torch.Tensor
    lam: torch.Tensor
    title: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "MixVisual":
        """From a method's ``model.visualize(x, y, plan)`` dict (the same five fields)."""
        return cls(sources=d["sources"], masks=d.get("masks"), mixed=d["mixed"], lam=torch.as_tensor(d["lam"]),
                   title=str(d.get("title", "")))

    def check(self) -> tuple[int, int]:
        """(N, K) after checking that the shapes agree (ValueError naming the mismatch)."""
        if self.sources.dim() != 5:
            raise ValueError(f"MixVisual.sources must be [N,K,C,H,W], got {list(self.sources.shape)}")
        n, k, c, h, w = self.sources.shape
        if tuple(self.mixed.shape) != (k, c, h, w):
            raise ValueError(f"MixVisual.mixed must be [{k},{c},{h},{w}], got {list(self.mixed.shape)}")
        if self.masks is not None and tuple(self.masks.shape) != (k, n, h, w):
            raise ValueError(f"MixVisual.masks must be [{k},{n},{h},{w}] or None, got {list(self.masks.shape)}")
        if tuple(self.lam.shape) not in ((n,), (k, n)):
            raise ValueError(f"MixVisual.lam must be [{n}] or [{k},{n}], got {list(self.lam.shape)}")
        return n, k


def _denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[...,C,H,W] normalised -> [...,H,W,C] pixels in [0,1] (CPU float)."""
    x = x.detach().float().cpu()
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x * s + m).clamp(0, 1).movedim(-3, -1)


def render_mix_grid(vis, path: str, mean: Sequence[float], std: Sequence[float],
                    max_samples: Optional[int] = 4) -> str:
    """Write the PNG grid of ``vis`` (a MixVisual, or the dict of a method's ``model.visualize``)
    to ``path``: a column per sample (at most ``max_samples``);
    rows: each source, each source's mask (heat map, 0..1), the mixed image. The lambdas are in
    the title (shared) or above each column (per sample). The PNG carries its numbers (lambdas,
    the mean of every mask) as JSON; see ``plots.read_data``."""
    if isinstance(vis, dict):
        vis = MixVisual.from_dict(vis)
    n, k = vis.check()
    k = k if max_samples is None else min(k, max_samples)
    sources = _denormalize(vis.sources[:, :k], mean, std)            # [N,K,H,W,C]
    mixed = _denormalize(vis.mixed[:k], mean, std)                    # [K,H,W,C]
    masks = None if vis.masks is None else vis.masks[:k].detach().float().cpu()
    lam = vis.lam.detach().float().cpu()
    per_sample = lam.dim() == 2
    lam = lam[:k] if per_sample else lam
    rows = n + (n if masks is not None else 0) + 1

    plt = plots.pyplot()
    fig, axes = plt.subplots(rows, k, figsize=(1.7 * k + 0.6, 1.6 * rows + 0.5), squeeze=False)
    for j in range(k):
        weights = lam[j] if per_sample else lam
        for i in range(n):
            ax = axes[i][j]
            ax.imshow(sources[i, j].numpy())
            if masks is None:   # no pixel masks: the scalar weight of this source
                ax.text(0.03, 0.97, f"{float(weights[i]):.2f}", transform=ax.transAxes, va="top", ha="left",
                        fontsize=8, color="yellow", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1})
            if j == 0:
                ax.set_ylabel(f"source {i + 1}", fontsize=8)
        if masks is not None:
            for i in range(n):
                ax = axes[n + i][j]
                im = ax.imshow(masks[j, i].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
                if j == 0:
                    ax.set_ylabel(f"mask {i + 1}", fontsize=8)
        ax = axes[rows - 1][j]
        ax.imshow(mixed[j].numpy())
        if j == 0:
            ax.set_ylabel("mixed", fontsize=8)
        if per_sample:
            axes[0][j].set_title("λ " + ", ".join(f"{float(v):.2f}" for v in weights), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    shared = "" if per_sample else "  λ = (" + ", ".join(f"{float(v):.2f}" for v in lam) + ")"
    fig.suptitle(f"{vis.title}{shared}", fontsize=9)
    if masks is not None:
        # Attached to every axis (not only the mask rows) so that all columns keep one width.
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.25, label="mask weight")
    data = {"title": vis.title, "sources": n, "samples": k, "lam": lam.tolist(), "has_masks": masks is not None,
            "mask_means": None if masks is None else masks.mean(dim=(2, 3)).tolist()}
    return plots.save(fig, path, data)


def vis_epochs(epochs: int, every: Optional[int] = None) -> list[int]:
    """The epochs (1-based) after which a run draws its mixed-sample grid: every ``every`` epochs
    (``--vis-every``; default: about 10 pictures per run, epochs // 10) and always the last one.
    Only the primary rank draws."""
    if every is not None and every < 1:
        raise UsageError(f"--vis-every must be at least 1 (got {every})")
    every = every or max(1, epochs // 10)
    return sorted({e for e in range(every, epochs + 1, every)} | {epochs})


@contextlib.contextmanager
def _buffers_preserved(*modules: torch.nn.Module):
    """Restore every buffer (BatchNorm running statistics, counters) of ``modules`` on exit, so a
    train-mode forward pass made for a picture leaves no trace on training."""
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


@torch.no_grad()
def mix_visual_from_adautomix(model, x: torch.Tensor, plan=None, samples: int = 4,
                              generator: Optional[torch.Generator] = None, title: str = "AdAutoMix") -> MixVisual:
    """The generator-side batch of an ``AdAutoMix`` model on images x [B,C,H,W] (normalised).

    Computed as the step computes it (``model.sample_plan``, the teacher's stage-3 features,
    ``generator.mask_logits`` and ``generator.mix(..., return_masks=True)``) in the model's current
    mode, outside any compiled graph, with every BatchNorm buffer restored afterwards and the
    plan drawn from ``generator`` (default: a fresh one seeded 0) rather than the training RNG.
    """
    b = x.shape[0]
    if plan is None:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        plan = model.sample_plan(b, generator=generator)
    k = min(samples, b)
    with _buffers_preserved(model.teacher, model.generator):
        feats = model.teacher.stem_to_stage3(x)
        if hasattr(model.teacher, "tap_features"):   # architectures whose tap needs a layout change
            feats = model.teacher.tap_features(feats)
        logits = model.generator.mask_logits(feats, plan.index_gen, plan.lam_gen)
        mixed, masks = model.generator.mix(logits, x, plan.index_gen, return_masks=True)
    index = plan.index_gen[:, :k]                                     # [N,K]
    sources = torch.stack([x[index[i]] for i in range(index.shape[0])])
    return MixVisual(sources=sources.float().cpu(), masks=masks[:k].float().cpu(), mixed=mixed[:k].float().cpu(),
                     lam=plan.lam_gen.float().cpu(), title=title)
