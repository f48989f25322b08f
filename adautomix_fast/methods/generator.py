"""The mask generator G (docs/algorithm.md, Generator) and the plain PyTorch twins of its fused ops.

G reads the teacher's stage-3 features F [B,C,h,w]. For a tuple of permutations
pi_1..pi_N ([N,B] indices) and ratios lambda_1..lambda_N it builds slot inputs Z_i = F[pi_i]
(optionally with a constant lambda_i channel), projects them to queries, keys (d = C // 2
channels, ReLU) and one-channel values, computes one cross-attention map per slot against the
sum of the *other* slots' keys (paper Eq. 5), upsamples the N low-resolution maps to the image
size, takes the softmax across the N slots (Eq. 6) and mixes the gathered images (Eq. 7).

The two functions `cross_attention_mask_reference` and `upsample_softmax_mix_reference` are the
readable definitions of the two fused Triton ops of `adautomix_fast.kernels`; tests and
benchmarks compare the kernels against them. Both compute in fp32, whatever the input dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..step.numerics import at_least_fp32, fp32_region

# The generator's mask upsampling modes and the implementations of its ops (--upsample,
# --gen-kernels; resolve_gen_kernels).
UPSAMPLES = ("bilinear", "nearest")
GEN_KERNELS = ("auto", "torch", "triton")


def cross_attention_mask_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   scale: Optional[float] = None) -> torch.Tensor:
    """m[i,b] = softmax_keys(q[i,b] @ (sum_{j!=i} k[j,b])^T * scale) @ v[i,b].

    q, k: [N,B,P,D]; v: [N,B,P]; returns fp32 [N,B,P]. scale defaults to D**-0.5.
    Materialises the [N,B,P,P] attention (the fused kernel does not).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    with fp32_region(q):
        q, k, v = at_least_fp32(q), at_least_fp32(k), at_least_fp32(v)
        k_others = k.sum(dim=0, keepdim=True) - k                  # [N,B,P,D]: sum over j != i
        logits = torch.matmul(q, k_others.transpose(-1, -2)) * scale  # [N,B,P(query),P(key)]
        attn = logits.softmax(dim=-1)
        return torch.matmul(attn, v.unsqueeze(-1)).squeeze(-1)


def upsample_masks(m: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Low-res logits [B,N,h,w] -> full-resolution masks [B,N,H,W], softmax over N, fp32."""
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    with fp32_region(m):
        # Each slot is upsampled as its own one-channel image ([B*N, 1, h, w]): the same values
        # as interpolating the [B, N, h, w] stack, and the form torch 2.11's Inductor compiles
        # correctly on a CPU. With N = 2 slots as channels, its C++ kernel for the bilinear
        # backward (fused with the slot softmax, the gather of the partner images and the
        # teacher's convolution) computes the scatter index of the second slot with the wrong
        # stride and writes past its buffer: heap corruption, or an abort on a bounds check
        # ("index out of bounds: 0 <= tmp40 < 12L"). 2.13 and 2.14 compile both forms correctly
        # (2.12 untested). Reproducer: tests/test_inductor_regressions.py.
        b, n, h, w = m.shape
        up = F.interpolate(at_least_fp32(m).reshape(b * n, 1, h, w), size=size, mode=mode, **kwargs)
        return up.view(b, n, *size).softmax(dim=1)


def mix_images(masks: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x_mix[b] = sum_i masks[b,i] * x[index[i,b]], computed in fp32, returned in x's dtype and
    memory format. masks: [B,N,H,W] (or [N] constant ratios); index: [N,B]."""
    out = None
    for i in range(index.shape[0]):
        weight = masks[:, i:i + 1] if masks.dim() == 4 else masks[i]
        term = weight * at_least_fp32(x[index[i]])
        out = term if out is None else out + term
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    return out.to(x.dtype).contiguous(memory_format=fmt)


def upsample_softmax_mix_reference(m: torch.Tensor, x: torch.Tensor, index: torch.Tensor,
                                   return_masks: bool = False, mode: str = "bilinear"):
    """Twin of ``adautomix_fast.kernels.upsample_softmax_mix``.

    m: [B,N,h,w] mask logits; x: [B,C,H,W]; index: [N,B] int64. Returns x_mix (and the masks
    [B,N,H,W] in fp32 when ``return_masks``).
    """
    masks = upsample_masks(m, tuple(x.shape[-2:]), mode)
    x_mix = mix_images(masks, x, index)
    return (x_mix, masks) if return_masks else x_mix


def mask_statistics(masks: torch.Tensor, lam: torch.Tensor) -> dict[str, float]:
    """How spatial the generated masks are and how far each slot's share is from its lambda
    (docs/training.md, "The generator's masks").

    masks: [B,N,H,W] (each pixel's weights over the N slots); lam: [N] (one ratio per slot, the
    same for every image) or [B,N]. Returns

    * ``mask_spread``: the standard deviation over the pixels of one image's mask for one slot
      (population std: a mask that is 0 on one half and 1 on the other has 0.5), averaged over
      the images and the slots. 0 for masks that are constant in space (a global blend, as plain
      mixup), up to 0.5 for binary masks that cover half the image.
    * ``mask_lambda_gap``: |mean over the pixels of M_i - lambda_i|, averaged over the images and
      the slots: how far the area each image gets is from the ratio its label is weighted by.
    """
    m = masks.detach().float().flatten(2)                      # [B,N,P]
    lam = lam.detach().float().to(m.device)
    if lam.dim() == 1:
        lam = lam.unsqueeze(0)                                 # [1,N]: the same ratios for every image
    spread = m.std(dim=2, unbiased=False).mean()
    gap = (m.mean(dim=2) - lam).abs().mean()
    return {"mask_spread": float(spread), "mask_lambda_gap": float(gap)}


def resolve_gen_kernels(choice: str, impl: str, device: torch.device) -> str:
    """Which implementation of the generator's ops runs: "triton" or "torch".

    auto: the Triton kernels with the fused implementation on a CUDA device, the plain PyTorch
    reference math otherwise (the reference implementation stays the readable definition).
    An explicit "triton" asks for the kernels with any implementation.
    """
    if choice == "auto":
        return "triton" if impl == "fused" and device.type == "cuda" else "torch"
    return choice


def kernel_limit_problem(generator: nn.Module, tap_side: int, image_side: int, mix_samples: int) -> Optional[str]:
    """Why the Triton kernels cannot take this generator's shapes (its head dim D, the tap's side
    with N slots), or None. A backbone read from a library can have a tap the kernels do not tile."""
    from ..kernels import _launch  # Triton's launch helpers: only asked when the kernels are chosen
    try:
        _launch.attention_config(generator.dim, torch.float32)
        _launch.mix_config(mix_samples, 3, tap_side, tap_side, image_side)
    except ValueError as exc:
        return str(exc)
    return None


def _kernel_ops():
    """``adautomix_fast.kernels``, imported on first use: it imports Triton, and on a CPU the
    kernels need TRITON_INTERPRET=1 set before that import."""
    from .. import kernels
    return kernels


def _projection(in_ch: int, out_ch: int, norm: bool) -> nn.Sequential:
    """1x1 conv (+ BatchNorm when ``norm``; then the conv has no bias) + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MaskGenerator(nn.Module):
    """The "mix block" G of AdAutoMix.

    Args:
        in_channels: channels of the stage-3 features (256 for ResNet-18, 1024 for ResNet-50).
        lam_concat: append a constant lambda_i channel to slot i's features.
        norm: BatchNorm after the query/key convolutions (which then have no bias).
        upsample: "bilinear" (align_corners=False) or "nearest".
        reduction: d = in_channels // reduction query/key channels.
    """

    def __init__(self, in_channels: int, lam_concat: bool = False, norm: bool = False,
                 upsample: str = "bilinear", reduction: int = 2):
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        self.in_channels = in_channels
        self.lam_concat = lam_concat
        self.norm = norm
        self.upsample = upsample
        # "torch" (the reference math below) or "triton" (adautomix_fast.kernels); set from the
        # run config by `resolve_gen_kernels`.
        self.kernels = "torch"
        self.dim = max(in_channels // reduction, 1)
        slot_channels = in_channels + (1 if lam_concat else 0)
        self.query = _projection(slot_channels, self.dim, norm)
        self.key = _projection(slot_channels, self.dim, norm)
        self.value = nn.Conv2d(slot_channels, 1, kernel_size=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The published initialisation: conv weights ~ N(0, 0.01), biases 0, BN (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def slot_inputs(self, feats: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> list[torch.Tensor]:
        """Z_i = F[pi_i] (+ a constant lambda_i channel), one [B,C(+1),h,w] tensor per slot."""
        slots = []
        for i in range(index.shape[0]):
            z = feats[index[i]]
            if self.lam_concat:
                lam_plane = lam[i].to(z.dtype).expand(z.shape[0], 1, *z.shape[2:])
                z = torch.cat([z, lam_plane], dim=1)
            slots.append(z)
        return slots

    def project(self, slots: list[torch.Tensor]):
        """q, k: [N,B,P,d]; v: [N,B,P]. Each slot is projected separately, as the released
        implementation does: with ``norm`` every slot gets its own BatchNorm batch statistics
        and the running statistics are updated slot by slot (query, key per slot)."""
        qs, ks, vs = [], [], []
        for z in slots:
            qs.append(self.query(z).flatten(2).transpose(1, 2))   # [B,P,d]
            ks.append(self.key(z).flatten(2).transpose(1, 2))
            vs.append(self.value(z).flatten(1))                   # [B,P]
        return torch.stack(qs), torch.stack(ks), torch.stack(vs)

    def mask_logits(self, feats: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits m [B,N,h,w] (fp32) for the slots (index [N,B], lam [N])."""
        b, _, h, w = feats.shape
        q, k, v = self.project(self.slot_inputs(feats, index, lam))
        if self.kernels == "triton":
            m = _kernel_ops().cross_attention_mask(q, k, v, scale=self.dim ** -0.5)   # [N,B,P]
        else:
            m = cross_attention_mask_reference(q, k, v, scale=self.dim ** -0.5)
        return m.transpose(0, 1).reshape(b, index.shape[0], h, w)

    def mix(self, m: torch.Tensor, x: torch.Tensor, index: torch.Tensor, return_masks: bool = False):
        """x_mix = sum_i M_i * x[index_i] with M = softmax_N(upsample(m)), by ``self.kernels``:
        the fused Triton op ("triton") or the reference math ("torch")."""
        if self.kernels == "triton":
            return _kernel_ops().upsample_softmax_mix(m, x, index, return_masks=return_masks, mode=self.upsample)
        return upsample_softmax_mix_reference(m, x, index, return_masks=return_masks, mode=self.upsample)

    def forward(self, feats: torch.Tensor, x: torch.Tensor, index: torch.Tensor, lam: torch.Tensor,
                return_masks: bool = False):
        """Mix the images x [B,C,H,W] with generated masks: x_mix = sum_i M_i * x[pi_i]."""
        m = self.mask_logits(feats, index, lam)
        return self.mix(m, x, index, return_masks=return_masks)


__all__ = [
    "MaskGenerator",
    "cross_attention_mask_reference",
    "upsample_softmax_mix_reference",
    "upsample_masks",
    "mix_images",
    "mask_statistics",
]

