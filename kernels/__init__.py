"""Triton kernels of adautomix_fast, installed as ``adautomix_fast.kernels``.

One op per file, each with its forward and backward kernels, host wrappers and
autograd registration; the plain PyTorch twins live in ``adautomix_fast.methods.generator``.

* ``cross_attention_mask(q, k, v, scale=None)``: the generator's N cross-attention maps
  (docs/algorithm.md, Generator; paper Eq. 5), flash-attention style, never materialising [N,B,P,P].
* ``upsample_softmax_mix(m, x, index, return_masks=False)``: bilinear upsampling of the mask
  logits, softmax over the N slots and the N-way mix of the gathered images, in one pass.

On CUDA the kernels are compiled Triton registered with ``torch.library.triton_op``; on a CPU
they run only in the Triton interpreter (``TRITON_INTERPRET=1`` set before this import), which
is what the tests do. ``python -m adautomix_fast.kernels._build_check`` (interpreter off) builds
every kernel variant for an sm_90 GPU ahead of time, without one, and reports registers, spills
and shared memory.
"""

from .cross_attention_mask import cross_attention_mask
from .upsample_softmax_mix import upsample_softmax_mix

__all__ = ["cross_attention_mask", "upsample_softmax_mix"]
