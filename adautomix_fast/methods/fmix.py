"""FMix (Harris et al. 2020): the mask is the top lambda-fraction of a low-frequency noise image.

Definition (docs/methods.md, Definitions): a Gaussian random spectrum whose amplitude decays
as 1 / f^decay (decay 3), inverse real FFT at the image size; the round(lambda H W) pixels of
largest value become 1 (they keep the image, the rest take the partner's pixels): a hard mask of exactly that
area, one mask per batch; the label weight is the sampled lambda; the partner permutation is
redrawn to avoid fixed points (OpenMixup).

Hand-written: no maintained library provides it (PyPI's ``fmix`` is an unrelated audio tool).
The top-k is done with a rank (argsort) compared with k on the device, so k never leaves the
device. Difference from the released code (a verbatim copy of the FMix authors' numpy code): it
indexes the random spectrum's real/imaginary parts along the frequency axis by mistake
(``spectrum[:, 0] + 1j * spectrum[:, 1]``), which turns the masks into smooth diagonal bands;
this implementation draws the 2-D spectrum the FMix paper describes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .pairmix import PairMix, no_repeat_permutation, pair_defaults

DECAY = 3.0


class FMixPlan(NamedTuple):
    """lam: 0-dim fp32; perm: int64 [B]; noise: fp32 [H, W // 2 + 1, 2] (real, imaginary parts of
    the random spectrum before scaling)."""

    lam: torch.Tensor
    perm: torch.Tensor
    noise: torch.Tensor


def spectrum_scale(height: int, width: int, decay: float = DECAY, device=None) -> torch.Tensor:
    """1 / max(f, 1 / max(H, W)) ** decay on the rfft2 grid [H, W // 2 + 1]."""
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    freq = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freq, min=1.0 / max(height, width)) ** decay


def low_frequency_image(noise: torch.Tensor, height: int, width: int, decay: float = DECAY) -> torch.Tensor:
    """fp32 [H, W]: the inverse real FFT of the scaled random spectrum."""
    scale = spectrum_scale(height, width, decay, noise.device)
    spectrum = torch.complex(noise[..., 0] * scale, noise[..., 1] * scale)
    return torch.fft.irfft2(spectrum, s=(height, width))


def fmix_mask(lam: torch.Tensor, noise: torch.Tensor, height: int, width: int, decay: float = DECAY) -> torch.Tensor:
    """fp32 [H, W] of 0/1: 1 on the round(lam H W) largest pixels of the low-frequency image."""
    image = low_frequency_image(noise, height, width, decay).flatten()
    order = torch.argsort(image, descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)       # rank of each pixel
    keep = torch.round(lam.double() * (height * width))
    return (rank < keep).to(torch.float32).reshape(height, width)


class FMix(PairMix):
    name = "fmix"
    title = "FMix"
    summary = "the top-lambda fraction of low-frequency noise as the mask"
    rank = 6
    defaults = pair_defaults(cifar=0.2, cifar_transformer=1.0, imagenet=1.0, fine_grained=0.2)
    small_imagenet_trunk_alpha = 0.2

    def sample_plan(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    n: Optional[int] = None, image_size: Optional[tuple[int, int]] = None) -> FMixPlan:
        h, w = self.pixels(image_size)
        lam = self.sample_lam(generator)
        noise = torch.randn(h, w // 2 + 1, 2, generator=generator, device=self.device)
        perm = no_repeat_permutation(batch_size, generator, self.device)
        return FMixPlan(lam, perm, noise)

    def mask(self, x: torch.Tensor, plan: FMixPlan) -> torch.Tensor:
        return fmix_mask(plan.lam, plan.noise, *x.shape[-2:])

    def mix(self, x: torch.Tensor, plan: FMixPlan) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask(x, plan).to(x.dtype)
        return m * x + (1.0 - m) * x[plan.perm], plan.lam

    def mix_masks(self, x: torch.Tensor, plan: FMixPlan) -> torch.Tensor:
        return self.mask(x, plan)[None]


__all__ = ["FMix", "FMixPlan", "fmix_mask", "low_frequency_image", "spectrum_scale"]
