"""Triton kernels of adautomix_fast, installed as ``adautomix_fast.kernels``.

The fused cross-attention mask and upsample-softmax-mix kernels land here (one op per file,
see spec/STYLE.md). Until then the generator runs its plain PyTorch reference math, which lives
in ``adautomix_fast.generator`` and stays as the kernels' twin in tests and benchmarks.
"""

__all__: list = []
