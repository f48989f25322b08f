"""Launch helpers shared by the Triton ops of ``adautomix_fast.kernels``.

One place for
* how an op is registered with PyTorch (docs/compile.md, facts 4 and 5): compiled Triton on a GPU
  goes through ``torch.library.triton_op`` + ``wrap_triton`` so torch.compile sees the kernels;
  interpreted Triton (``TRITON_INTERPRET=1``, CPU tensors) cannot run inside torch.compile, so there
  the launch is wrapped in an opaque ``torch.library.custom_op`` with a fake implementation.
  Both get their backward with ``register_autograd``.
* block sizes and ``num_warps`` (one helper per op, a one-line error beyond the supported size);
* input validation that looks at shapes, dtypes and devices only (no host synchronisation),
  raising one-line ``ValueError`` / ``TypeError`` before any kernel launches.

The block sizes are starting points chosen by reasoning about register and shared-memory use
on an H100 (228 KB shared memory, 64K registers per SM); none has been tuned on a GPU yet.
"""

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import triton


def _interpreting() -> bool:
    """Whether @triton.jit kernels defined from now on run in the Triton interpreter."""
    try:
        from triton import knobs  # triton >= 3.4
        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Decided once, at import: TRITON_INTERPRET must be set before the kernels are defined.
INTERPRET: bool = _interpreting()

if INTERPRET:
    def wrap_triton(kernel):
        """Identity under the interpreter: interpreted kernels are launched directly inside an
        opaque custom op (torch.library.wrap_triton cannot wrap an InterpretedFunction)."""
        return kernel
else:
    # compiled Triton: torch's own wrapper (the interpreter gets the identity above); re-exported
    # for the op files
    from torch.library import wrap_triton  # noqa: F401

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def library_op(name: str, fake: Callable) -> Callable:
    """Decorator registering ``fn`` as the operator ``name`` (no mutated arguments).

    Compiled Triton: ``torch.library.triton_op`` (its body, traced with fake tensors, is also its
    fake implementation, and Inductor sees the wrapped kernels). Interpreter: an opaque
    ``torch.library.custom_op`` with ``fake`` as its fake implementation.
    """
    def decorate(fn: Callable):
        if INTERPRET:
            op = torch.library.custom_op(name, mutates_args=())(fn)
            op.register_fake(fake)
        else:
            op = torch.library.triton_op(name, mutates_args=())(fn)
        return op
    return decorate


# ---------------------------------------------------------------------------- validation
def check_float(name: str, t, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {list(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_devices(**tensors: torch.Tensor) -> None:
    """All on one device, and a device the kernels can run on."""
    devices = {str(t.device) for t in tensors.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {t.device}" for k, t in tensors.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")
    device = next(iter(tensors.values())).device
    if device.type == "cuda" or INTERPRET:
        return
    raise ValueError(f"the Triton kernels need CUDA tensors, got {device} tensors; for CPU tensors set "
                     "TRITON_INTERPRET=1 before importing adautomix_fast.kernels (slow, for tests)")


def check_index_values() -> bool:
    """Whether the public functions may check index *values* (a value check reads the tensor).

    Always for CPU index tensors outside torch.compile (no device sync involved); for CUDA
    tensors only with ``ADAUTOMIX_KERNEL_CHECKS=1`` (it synchronises the host with the GPU).
    Out-of-range indices that are not caught here are memory-safe in the kernels: the slot
    reads zeros.
    """
    return not torch.compiler.is_compiling()


def debug_checks() -> bool:
    return os.environ.get("ADAUTOMIX_KERNEL_CHECKS", "0") == "1"


# ---------------------------------------------------------------------------- block sizes
def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@dataclass(frozen=True)
class Tile:
    block_m: int      # query positions per program / per inner step
    block_n: int      # key positions per program / per inner step
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class AttentionConfig:
    block_d: int      # the whole head dimension, padded to a power of two (>= 16 for tl.dot)
    precision: str    # tl.dot input_precision: "tf32x3" / "ieee" for fp32 inputs, unused for 16-bit
    keys_block: int   # key positions per program of the Ko = sum_{j!=i} k_j prologue
    fwd: Tile
    dq: Tile
    dkv: Tile


MAX_HEAD_DIM = 512
_attention_override: Optional[tuple[int, int]] = None


@contextlib.contextmanager
def attention_blocks(block_m: int, block_n: int) -> Iterator[None]:
    """Force (block_m, block_n) in every cross-attention kernel inside the block (tests use it to
    run several key/query blocks with P = 49 in the interpreter). Powers of two >= 16."""
    global _attention_override
    prev, _attention_override = _attention_override, (block_m, block_n)
    try:
        yield
    finally:
        _attention_override = prev


# (fwd, dq, dkv) tiles as (block_m, block_n, num_warps, num_stages) by padded head dim. Chosen so
# that the sm_90 build (triton 3.8, ptxas via triton.compile for GPUTarget("cuda", 90, 32), no
# GPU) shows no register spills and stays under 228 KB of shared memory; not timed on a GPU yet.
_TILES_16BIT = {
    64: ((64, 64, 4, 2), (64, 64, 4, 2), (64, 64, 4, 2)),
    128: ((64, 64, 4, 2), (64, 64, 8, 2), (64, 64, 8, 2)),
    256: ((64, 64, 8, 2), (64, 64, 8, 2), (32, 32, 4, 2)),
    512: ((32, 32, 8, 1), (32, 32, 8, 1), (32, 32, 8, 1)),
}
# fp32 inputs: 3xTF32 tensor-core products up to D = 128 (fp32-level accuracy); beyond, its
# operand splitting spills heavily, and exact FMA products ("ieee") with 16 x 16 tiles do not.
_TILES_FP32 = {
    64: ("tf32x3", ((32, 32, 8, 2),) * 3),
    128: ("tf32x3", ((16, 32, 4, 2),) * 3),
    256: ("ieee", ((16, 16, 8, 1),) * 3),
    512: ("ieee", ((16, 16, 8, 1),) * 3),
}


def attention_config(d: int, dtype: torch.dtype) -> AttentionConfig:
    """Tiles for the cross-attention kernels; the whole head dimension sits in one tile, so the
    query/key tiles shrink as D grows (the dq / dKo accumulators are [block, D] fp32)."""
    if d < 1 or d > MAX_HEAD_DIM:
        raise ValueError(f"cross_attention_mask supports head dims 1..{MAX_HEAD_DIM}, got D={d}")
    block_d = max(16, next_pow2(d))
    key = max(64, block_d)
    if dtype == torch.float32:
        precision, tiles = _TILES_FP32[key]
    else:
        precision, tiles = "tf32", _TILES_16BIT[key]
    fwd, dq, dkv = (Tile(*t) for t in tiles)
    if _attention_override is not None:
        bm, bn = _attention_override
        fwd, dq, dkv = (Tile(bm, bn, t.num_warps, t.num_stages) for t in (fwd, dq, dkv))
    return AttentionConfig(block_d, precision, max(2, min(64, 4096 // block_d)), fwd, dq, dkv)


MAX_SLOTS = 16
# Elements of the largest fp32 register tile a mix-kernel program holds (a [slots, pixels] or
# [slots, pixels, low-res columns] tile): 8192 / 256 threads = 32 values per thread at 8 warps.
_MIX_TILE = 8192


@dataclass(frozen=True)
class MixConfig:
    slots: int          # N padded to a power of two
    block: int          # output pixels per program (forward)
    dx_block: int       # output pixels per program (dx)
    channels: int       # C padded to a power of two (dx tile)
    block_w: int        # output columns per step of the row kernel (backward)
    block_lw: int       # low-res columns, padded (whole low-res row in one tile)
    block_lh: int       # low-res rows per program of the column kernel (backward)
    block_r: int        # output rows per step of the column kernel (backward)
    num_warps: int


def mix_config(n: int, c: int, h: int, w: int, W: int) -> MixConfig:
    """Tiles for the upsample-softmax-mix kernels (N slots, C channels, low-res h x w, width W)."""
    if n < 1 or n > MAX_SLOTS:
        raise ValueError(f"upsample_softmax_mix supports 1..{MAX_SLOTS} slots, got N={n}")
    slots = next_pow2(n)
    channels = next_pow2(c)
    # Forward / dx: [slots, block] logits, masks and gathered pixels ([channels, block] too for
    # dx) per program. 2048 elements over 8 warps: the sm_90 build (triton 3.8) needs ~80
    # registers for the ResNet-50 shape (166 with 4 warps), room for occupancy in a
    # bandwidth-bound gather.
    block = max(16, min(1024, 2048 // slots))
    dx_block = max(16, min(1024, 2048 // max(slots, channels)))
    block_lw = max(2, next_pow2(w))
    if slots * 2 * block_lw > _MIX_TILE:
        raise ValueError(f"upsample_softmax_mix: low-res width {w} is too large for {n} slots "
                         f"(needs next_pow2(N) * next_pow2(w) <= {_MIX_TILE // 2})")
    block_w = max(2, min(next_pow2(W), _MIX_TILE // (slots * block_lw)))
    block_lh = max(2, min(next_pow2(h), _MIX_TILE // (16 * block_lw)))
    block_r = max(2, min(64, _MIX_TILE // (block_lh * block_lw)))
    return MixConfig(slots, block, dx_block, channels, block_w, block_lw, block_lh, block_r, 8)
