"""Fused cross-attention mask of the AdAutoMix generator (docs/algorithm.md, Generator; paper Eq. 5).

For N slots, B samples, P positions and head dim D, with q, k: [N,B,P,D] and v: [N,B,P]:

    Ko_i = sum_{j != i} k_j                       (keys of the *other* slots)   [N,B,P,D]
    S_i  = scale * q_i @ Ko_i^T                    (scale = D**-0.5 by default)  [N,B,P,P]
    A_i  = softmax over the key axis of S_i
    m_i  = A_i @ v_i                               (one-channel value)           [N,B,P]

returned in fp32 whatever the input dtype (fp32, fp16, bf16). The [N,B,P,P] attention is never
materialised: the forward streams over key blocks with an online softmax (flash-attention) and
saves the base-2 log-sum-exp of each row (fp32) for the backward, which recomputes A.

Backward (dm = dL/dm, all in fp32):
    dv_i  = A_i^T dm_i
    dS_i  = A_i * dm_i[:,None] * (v_i[None,:] - m_i[:,None])   (softmax backward with a scalar
                                                                value: rowsum(dA*A) = dm*m)
    dq_i  = scale * dS_i @ Ko_i
    dKo_i = scale * dS_i^T @ q_i
    dk_j  = sum_{i != j} dKo_i = sum_i dKo_i - dKo_j          (N = 2: dk_j = dKo_{1-j})

Kernels (grid axis 0 = slot*B + sample, axis 1 = block of positions):
    _cross_attention_mask_keys_kernel     prologue: Ko_i = sum_{j != i} k_j, summed in fp32 and
                                          stored [N,B,P,D] in k's dtype (transient; the
                                          backward recomputes it instead of keeping it)
    _cross_attention_mask_fwd_kernel      per query block: out, lse (online softmax over keys)
    _cross_attention_mask_bwd_dq_kernel   per query block: dq (loops over key blocks)
    _cross_attention_mask_bwd_dkv_kernel  per key block: dv and dKo (loops over query blocks);
                                          with N = 2 it writes dKo_i straight into dk_{1-i}
    _cross_attention_mask_bwd_dk_kernel   N > 2: dk_j = sum_i dKo_i - dKo_j from an fp32 buffer
Every gradient element is written by exactly one program in a fixed order: no atomics, the
backward is deterministic. Numerics: tl.dot takes the storage dtype with fp32 accumulation
(fp16/bf16: tensor cores, Ko rounded once to the input dtype as PyTorch's own half-precision
math would; fp32: 3xTF32 products up to D = 128, exact FMA products beyond, never plain TF32);
softmax statistics, the softmax backward and every accumulator are fp32. The whole head
dimension sits in one tile (D <= 512); tile sizes per dtype and D are in
``_launch.attention_config``.

Registered as the operators ``adautomix_fast::cross_attention_mask_fwd`` / ``_bwd`` with
``register_autograd`` (see ``_launch.library_op``), so torch.compile can trace the public
function ``cross_attention_mask`` (the registered autograd formula takes the place of a
``torch.autograd.Function``). The plain PyTorch twin is
``adautomix_fast.methods.generator.cross_attention_mask_reference``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import attention_config, check_devices, check_float, library_op, wrap_triton


@triton.jit
def _cross_attention_mask_keys_kernel(
    K_ptr, Ko_ptr,
    stride_kn, stride_kb, stride_kp, stride_kd,
    N, B, P, D,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Ko_i = sum_{j != i} k_j, summed in fp32 and stored contiguous [N,B,P,D] in k's dtype."""
    pid_nb = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    i = pid_nb // B
    b = pid_nb % B
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_n[:, None] < P) & (offs_d[None, :] < D)
    k_ptrs = K_ptr + b * stride_kb + offs_n[:, None] * stride_kp + offs_d[None, :] * stride_kd
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for j in range(0, N - 1):
        jj = (j + (j >= i).to(tl.int32)).to(tl.int64)   # skip slot i
        acc += tl.load(k_ptrs + jj * stride_kn, mask=mask, other=0.0).to(tl.float32)
    tl.store(Ko_ptr + pid_nb * P * D + offs_n[:, None] * D + offs_d[None, :],
             acc.to(Ko_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cross_attention_mask_fwd_kernel(
    Q_ptr, Ko_ptr, V_ptr, Out_ptr, Lse_ptr,
    stride_qn, stride_qb, stride_qp, stride_qd,
    stride_vn, stride_vb, stride_vp,
    N, B, P, D, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_nb = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    i = pid_nb // B
    b = pid_nb % B
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < P
    mask_d = offs_d < D
    q = tl.load(Q_ptr + i * stride_qn + b * stride_qb + offs_m[:, None] * stride_qp
                + offs_d[None, :] * stride_qd, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    qk_scale = scale * 1.4426950408889634   # log2(e): the softmax runs in base 2 (exp2)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    ko_base = Ko_ptr + pid_nb * P * D
    v_base = V_ptr + i * stride_vn + b * stride_vb
    for start_n in range(0, P, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < P
        ko = tl.load(ko_base + offs_n[:, None] * D + offs_d[None, :],
                     mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        s = tl.dot(q, tl.trans(ko), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        v = tl.load(v_base + offs_n * stride_vp, mask=mask_n, other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha + tl.sum(p * v[None, :], 1)
        m_i = m_new
    out = acc / l_i
    lse = m_i + tl.log2(l_i)
    # Out and Lse are contiguous [N,B,P] fp32.
    tl.store(Out_ptr + pid_nb * P + offs_m, out, mask=mask_m)
    tl.store(Lse_ptr + pid_nb * P + offs_m, lse, mask=mask_m)


@triton.jit
def _cross_attention_mask_bwd_dq_kernel(
    Q_ptr, Ko_ptr, V_ptr, Out_ptr, Lse_ptr, DOut_ptr, DQ_ptr,
    stride_qn, stride_qb, stride_qp, stride_qd,
    stride_vn, stride_vb, stride_vp,
    stride_don, stride_dob, stride_dop,
    N, B, P, D, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_nb = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    i = pid_nb // B
    b = pid_nb % B
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < P
    mask_d = offs_d < D
    q = tl.load(Q_ptr + i * stride_qn + b * stride_qb + offs_m[:, None] * stride_qp
                + offs_d[None, :] * stride_qd, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    dm = tl.load(DOut_ptr + i * stride_don + b * stride_dob + offs_m * stride_dop,
                 mask=mask_m, other=0.0).to(tl.float32)
    mo = tl.load(Out_ptr + pid_nb * P + offs_m, mask=mask_m, other=0.0)
    lse = tl.load(Lse_ptr + pid_nb * P + offs_m, mask=mask_m, other=0.0)
    qk_scale = scale * 1.4426950408889634

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    ko_base = Ko_ptr + pid_nb * P * D
    v_base = V_ptr + i * stride_vn + b * stride_vb
    for start_n in range(0, P, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < P
        ko = tl.load(ko_base + offs_n[:, None] * D + offs_d[None, :],
                     mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        s = tl.dot(q, tl.trans(ko), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])                                   # A, recomputed
        v = tl.load(v_base + offs_n * stride_vp, mask=mask_n, other=0.0).to(tl.float32)
        ds = p * dm[:, None] * (v[None, :] - mo[:, None])
        dq += tl.dot(ds.to(q.dtype), ko, input_precision=DOT_PRECISION)
    dq = dq * scale
    # DQ is contiguous [N,B,P,D] in q's dtype.
    tl.store(DQ_ptr + pid_nb * P * D + offs_m[:, None] * D + offs_d[None, :],
             dq.to(DQ_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


@triton.jit
def _cross_attention_mask_bwd_dkv_kernel(
    Q_ptr, Ko_ptr, V_ptr, Out_ptr, Lse_ptr, DOut_ptr, DKo_ptr, DV_ptr,
    stride_qn, stride_qb, stride_qp, stride_qd,
    stride_vn, stride_vb, stride_vp,
    stride_don, stride_dob, stride_dop,
    N, B, P, D, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, COMPUTE_DK: tl.constexpr, FLIP_SLOT: tl.constexpr,
):
    pid_nb = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    i = pid_nb // B
    b = pid_nb % B
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < P
    mask_d = offs_d < D
    q_dtype = Q_ptr.dtype.element_ty
    ko = tl.load(Ko_ptr + pid_nb * P * D + offs_n[:, None] * D + offs_d[None, :],
                 mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    v = tl.load(V_ptr + i * stride_vn + b * stride_vb + offs_n * stride_vp,
                mask=mask_n, other=0.0).to(tl.float32)
    qk_scale = scale * 1.4426950408889634

    dko = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N], dtype=tl.float32)
    q_base = Q_ptr + i * stride_qn + b * stride_qb
    for start_m in range(0, P, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < P
        q = tl.load(q_base + offs_m[:, None] * stride_qp + offs_d[None, :] * stride_qd,
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        dm = tl.load(DOut_ptr + i * stride_don + b * stride_dob + offs_m * stride_dop,
                     mask=mask_m, other=0.0).to(tl.float32)
        mo = tl.load(Out_ptr + pid_nb * P + offs_m, mask=mask_m, other=0.0)
        lse = tl.load(Lse_ptr + pid_nb * P + offs_m, mask=mask_m, other=0.0)
        s = tl.dot(q, tl.trans(ko), input_precision=DOT_PRECISION) * qk_scale     # [BM, BN]
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_m[:, None], p, 0.0)
        pdm = p * dm[:, None]
        dv += tl.sum(pdm, 0)
        if COMPUTE_DK:
            ds = pdm * (v[None, :] - mo[:, None])
            dko += tl.dot(tl.trans(ds.to(q_dtype)), q, input_precision=DOT_PRECISION)
    # DV is contiguous [N,B,P] in v's dtype.
    tl.store(DV_ptr + pid_nb * P + offs_n, dv.to(DV_ptr.dtype.element_ty), mask=mask_n)
    if COMPUTE_DK:
        dko = dko * scale
        if FLIP_SLOT:       # N == 2: dk_{1-i} = dKo_i, written in k's dtype
            out_nb = (N - 1 - i) * B + b
        else:               # fp32 buffer of dKo_i, summed by _cross_attention_mask_bwd_dk_kernel
            out_nb = pid_nb
        tl.store(DKo_ptr + out_nb * P * D + offs_n[:, None] * D + offs_d[None, :],
                 dko.to(DKo_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


@triton.jit
def _cross_attention_mask_bwd_dk_kernel(DKo_ptr, DK_ptr, N, numel, BLOCK: tl.constexpr):
    """dk_j = sum_i dKo_i - dKo_j over contiguous [N, numel] buffers (as the reference's autograd)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    total = tl.zeros([BLOCK], dtype=tl.float32)
    src = DKo_ptr + offs                  # pointers advance slot by slot: no int32 j * numel
    for j in range(0, N):
        total += tl.load(src, mask=mask, other=0.0)
        src += numel
    src = DKo_ptr + offs
    dst = DK_ptr + offs
    for j in range(0, N):
        own = tl.load(src, mask=mask, other=0.0)
        tl.store(dst, (total - own).to(DK_ptr.dtype.element_ty), mask=mask)
        src += numel
        dst += numel


def _other_keys(k: torch.Tensor, cfg) -> torch.Tensor:
    """Ko = sum_{j != i} k_j, contiguous [N,B,P,D] in k's dtype (summed in fp32)."""
    n, b, p, d = k.shape
    ko = torch.empty((n, b, p, d), device=k.device, dtype=k.dtype)
    wrap_triton(_cross_attention_mask_keys_kernel)[(n * b, triton.cdiv(p, cfg.keys_block))](
        k, ko, *k.stride(), n, b, p, d, BLOCK_N=cfg.keys_block, BLOCK_D=cfg.block_d, num_warps=4)
    return ko


# ---------------------------------------------------------------------------- host wrappers
def _fwd_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    n, b, p, _ = q.shape
    return q.new_empty((n, b, p), dtype=torch.float32), q.new_empty((n, b, p), dtype=torch.float32)


@library_op("adautomix_fast::cross_attention_mask_fwd", fake=_fwd_fake)
def cross_attention_mask_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, lse): m fp32 [N,B,P]; lse the base-2 log-sum-exp of each attention row, fp32 [N,B,P]."""
    n, b, p, d = q.shape
    cfg = attention_config(d, q.dtype)
    ko = _other_keys(k, cfg)
    out = torch.empty((n, b, p), device=q.device, dtype=torch.float32)
    lse = torch.empty((n, b, p), device=q.device, dtype=torch.float32)
    fwd = cfg.fwd
    wrap_triton(_cross_attention_mask_fwd_kernel)[(n * b, triton.cdiv(p, fwd.block_m))](
        q, ko, v, out, lse, *q.stride(), *v.stride(), n, b, p, d, scale,
        BLOCK_M=fwd.block_m, BLOCK_N=fwd.block_n, BLOCK_D=cfg.block_d,
        DOT_PRECISION=cfg.precision, num_warps=fwd.num_warps, num_stages=fwd.num_stages)
    return out, lse


def _bwd_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
              dout: torch.Tensor, scale: float, need_dq: bool, need_dk: bool, need_dv: bool):
    empty = q.new_empty((0,))
    return (torch.empty(q.shape, device=q.device, dtype=q.dtype) if need_dq else empty,
            torch.empty(k.shape, device=k.device, dtype=k.dtype) if need_dk else empty.clone(),
            torch.empty(v.shape, device=v.device, dtype=v.dtype) if need_dv else empty.clone())


@library_op("adautomix_fast::cross_attention_mask_bwd", fake=_bwd_fake)
def cross_attention_mask_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                                  lse: torch.Tensor, dout: torch.Tensor, scale: float, need_dq: bool,
                                  need_dk: bool, need_dv: bool
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each contiguous in its input's dtype; an empty tensor where not needed."""
    n, b, p, d = q.shape
    cfg = attention_config(d, q.dtype)
    empty = q.new_empty((0,))
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype) if need_dq else empty
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype) if need_dk else empty.clone()
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype) if need_dv else empty.clone()
    if not (need_dq or need_dk or need_dv):
        return dq, dk, dv
    ko = _other_keys(k, cfg)                      # recomputed rather than kept from the forward
    strides = (*q.stride(), *v.stride(), *dout.stride())
    if need_dq:
        c = cfg.dq
        wrap_triton(_cross_attention_mask_bwd_dq_kernel)[(n * b, triton.cdiv(p, c.block_m))](
            q, ko, v, out, lse, dout, dq, *strides, n, b, p, d, scale,
            BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_D=cfg.block_d,
            DOT_PRECISION=cfg.precision, num_warps=c.num_warps, num_stages=c.num_stages)
    if need_dk or need_dv:
        flip = n == 2
        # dKo: straight into dk when N == 2, else an fp32 buffer summed below.
        dko = (dk if flip else torch.empty((n, b, p, d), device=q.device, dtype=torch.float32)) \
            if need_dk else empty
        dv_out = dv if need_dv else torch.empty(v.shape, device=v.device, dtype=torch.float32)
        c = cfg.dkv
        wrap_triton(_cross_attention_mask_bwd_dkv_kernel)[(n * b, triton.cdiv(p, c.block_n))](
            q, ko, v, out, lse, dout, dko, dv_out, *strides, n, b, p, d, scale,
            BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_D=cfg.block_d,
            DOT_PRECISION=cfg.precision, COMPUTE_DK=need_dk, FLIP_SLOT=flip,
            num_warps=c.num_warps, num_stages=c.num_stages)
        if need_dk and not flip:
            numel = b * p * d
            block = 1024
            wrap_triton(_cross_attention_mask_bwd_dk_kernel)[(triton.cdiv(numel, block),)](
                dko, dk, n, numel, BLOCK=block, num_warps=4)
    return dq, dk, dv


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
    if dout is None or not (need_dq or need_dk or need_dv):
        return None, None, None, None
    dq, dk, dv = cross_attention_mask_backward(q, k, v, out, lse, dout, ctx.scale,
                                               need_dq, need_dk, need_dv)
    return (dq if need_dq else None,    # dL/dq
            dk if need_dk else None,    # dL/dk
            dv if need_dv else None,    # dL/dv
            None)                       # scale


cross_attention_mask_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------- public function
def cross_attention_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         scale: Optional[float] = None) -> torch.Tensor:
    """m[i,b] = softmax_keys(q[i,b] @ (sum_{j!=i} k[j,b])^T * scale) @ v[i,b], fp32 [N,B,P].

    q, k: [N,B,P,D] (same dtype: fp32, fp16 or bf16, any strides); v: [N,B,P]; scale defaults
    to D**-0.5. Differentiable in q, k and v. D up to 512.
    """
    check_float("q", q, 4)
    check_float("k", k, 4)
    check_float("v", v, 3)
    if k.shape != q.shape:
        raise ValueError(f"q and k must have the same shape [N,B,P,D], got {list(q.shape)} and {list(k.shape)}")
    if v.shape != q.shape[:3]:
        raise ValueError(f"v must have shape [N,B,P] = {list(q.shape[:3])}, got {list(v.shape)}")
    if k.dtype != q.dtype:
        raise TypeError(f"q and k must have the same dtype, got {q.dtype} and {k.dtype}")
    check_devices(q=q, k=k, v=v)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif isinstance(scale, torch.Tensor) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python number or None, got {type(scale).__name__}")
    attention_config(q.shape[-1], q.dtype)   # D within range, before any launch
    if q.numel() == 0:
        raise ValueError(f"cross_attention_mask needs non-empty inputs, got q of shape {list(q.shape)}")
    out, _ = cross_attention_mask_forward(q, k, v, float(scale))
    return out


__all__ = ["cross_attention_mask", "cross_attention_mask_forward", "cross_attention_mask_backward"]
