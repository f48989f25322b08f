"""Where the engine computes in fp32 whatever the autocast dtype."""

from __future__ import annotations

import torch


def fp32_region(t: torch.Tensor):
    """Autocast off: inside, ops run in the dtype of their (fp32) inputs. The attention, the
    mask softmax and the losses stay fp32 under --amp, as the released implementation forces."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32, or as it is when it is already wider: the regions that must not run in
    fp16/bf16 compute in fp32, and a float64 model (exact, CPU-independent regression values and
    gradient checks) stays float64 throughout."""
    return t if t.dtype == torch.float64 else t.float()
