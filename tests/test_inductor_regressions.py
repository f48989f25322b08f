"""Inductor bugs of the torch versions the package accepts, each with the smallest function that
shows it and the engine's form of the same computation, which must compile correctly.

torch 2.11 (CPU Inductor): the backward of a bilinear upsample of [B, 2, h, w] mask logits,
fused with the softmax over the 2 slots, the gather of the mixed images by a permutation and a
convolution of the mix, writes out of bounds (heap corruption or an abort in an OpenMP region:
the process dies). Three compiled AdAutoMix steps with N = 2 died this way. The engine
upsamples each slot as its own one-channel image (``generator.upsample_masks``). Each case runs
in a child process: a death there is a failed test, not a dead test session.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_UPSAMPLE_SOFTMAX_GATHER = r"""
import torch, torch.nn.functional as F
from adautomix_fast.methods.generator import upsample_masks
torch.manual_seed(0)
B, N, h, H = 12, {n}, 4, 16
def step(v, x, w, index):
    m = v.transpose(0, 1).reshape(B, N, h, h)                       # the generator's [N,B,P] -> [B,N,h,w]
    masks = upsample_masks(m, (H, H)) if {engine} else F.interpolate(m, size=(H, H), mode="bilinear").softmax(1)
    xm = sum(masks[:, i:i + 1] * x[index[i]] for i in range(N))
    return torch.autograd.grad(F.conv2d(xm, w).relu().sum(), [v])[0]
torch._dynamo.config.trace_autograd_ops = True
compiled = torch.compile(step, fullgraph=True, dynamic=False)
v = torch.randn(N, B, h * h, requires_grad=True)
x, w = torch.randn(B, 3, H, H), torch.randn(8, 3, 3, 3)
index = torch.stack([torch.arange(B)] + [torch.randperm(B) for _ in range(N - 1)])
got, want = compiled(v, x, w, index), step(v, x, w, index)
torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("n", [2, 3])
def test_the_engines_mask_upsampling_compiles_correctly(n):
    """On every supported torch (the raw form, ``engine=False``, dies under 2.11 with n = 2)."""
    code = _UPSAMPLE_SOFTMAX_GATHER.format(n=n, engine=True)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
