"""Fused upsample-softmax-N-way-mix of the AdAutoMix generator (docs/algorithm.md, Generator).

m: [B,N,h,w] low-resolution mask logits; x: [B,C,H,W] images (NCHW or channels-last, any
strides); index: [N,B] int64, slot i of sample b takes image x[index[i,b]].

    U[b,i]  = bilinear upsample of m[b,i] to (H,W), PyTorch's align_corners=False:
              src = max((dst + 0.5) * (in/out) - 0.5, 0), taps floor(src) and floor(src)+1
              (clamped at the last row/column), weights 1 - frac and frac;
              or nearest: src = min(floor(dst * in/out), in - 1)
    M[b]    = softmax over the N slots of U[b] at every pixel              (Eq. 6)
    x_mix[b] = sum_i M[b,i] * x[index[i,b]]                                (Eq. 7)

computed in fp32 in one pass: the full-resolution logits are never stored, and the masks are
written (fp32, [B,N,H,W]) only when asked. x_mix has x's dtype and strides (empty_like).

Backward, for dy = dL/dx_mix (and dL/dM when the masks were returned and used):
    G[b,i,p]  = sum_c dy[b,c,p] * x[index[i,b],c,p]  (+ dL/dM[b,i,p])
    dU        = M * (G - sum_i M_i G_i)                     softmax backward
    dm        = R_h^T dU R_w                                adjoint of the separable upsample
    dx[a]     = sum_{(i,b): index[i,b]=a} M[b,i] * dy[b]    (only when x requires grad)

Kernels, all deterministic (each output element is summed by one program in a fixed order):
    _upsample_softmax_mix_fwd_kernel       grid (pixel blocks, B): masks, mix
    _upsample_softmax_mix_bwd_rows_kernel  grid (H, B): one output row; G, dU, and the row's
                                           horizontal adjoint T[b,i,r,:] = dU[b,i,r,:] R_w (fp32,
                                           [B,N,H,w], small)
    _upsample_softmax_mix_bwd_cols_kernel  grid (low-res row blocks, B*N): dm = R_h^T T
    _upsample_softmax_mix_bwd_dx_kernel    grid (pixel blocks, B): per target image a, loops over
                                           its contributors (i,b), found by a stable sort of
                                           index on the device (no atomics, no host sync), and
                                           recomputes M[b,i] from m.
Out-of-range index values read zeros (and receive no gradient) instead of faulting; the public
function rejects them up front where that needs no host synchronisation (see
``_launch.check_index_values``).

Registered as ``adautomix_fast::upsample_softmax_mix_fwd`` / ``_bwd`` with ``register_autograd``
(see ``_launch.library_op``). The plain PyTorch twin is
``adautomix_fast.methods.generator.upsample_softmax_mix_reference``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import check_devices, check_float, check_index_values, debug_checks, library_op, mix_config, wrap_triton


@triton.jit
def _source_taps(dst, scale, in_size, NEAREST: tl.constexpr):
    """Input taps (i0, i1) and weights (w0, w1) of output coordinates ``dst`` (int tensor),
    exactly as PyTorch computes them for align_corners=False (bilinear) or nearest."""
    if NEAREST:
        i0 = tl.minimum(tl.floor(dst.to(tl.float32) * scale).to(tl.int32), in_size - 1)
        i1 = i0
        w1 = dst.to(tl.float32) * 0.0
    else:
        src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
        i0 = src.to(tl.int32)                       # src >= 0: truncation is floor
        i1 = i0 + (i0 < in_size - 1).to(tl.int32)
        w1 = src - i0.to(tl.float32)
    return i0, i1, 1.0 - w1, w1


@triton.jit
def _upsampled_logits(m_base, stride_mn, stride_mh, stride_mw, slots, slot_mask,
                      y0, y1, wy0, wy1, x0, x1, wx0, wx1, pix_mask, NEAREST: tl.constexpr):
    """[SLOTS, BLOCK] fp32 upsampled logits of one sample; -inf in padded slots."""
    base = m_base + slots[:, None].to(tl.int64) * stride_mn
    lm = slot_mask[:, None] & pix_mask[None, :]
    v00 = tl.load(base + y0[None, :] * stride_mh + x0[None, :] * stride_mw, mask=lm, other=0.0).to(tl.float32)
    if NEAREST:
        u = v00
    else:
        v01 = tl.load(base + y0[None, :] * stride_mh + x1[None, :] * stride_mw, mask=lm, other=0.0).to(tl.float32)
        v10 = tl.load(base + y1[None, :] * stride_mh + x0[None, :] * stride_mw, mask=lm, other=0.0).to(tl.float32)
        v11 = tl.load(base + y1[None, :] * stride_mh + x1[None, :] * stride_mw, mask=lm, other=0.0).to(tl.float32)
        u = wy0[None, :] * (wx0[None, :] * v00 + wx1[None, :] * v01) \
            + wy1[None, :] * (wx0[None, :] * v10 + wx1[None, :] * v11)
    return tl.where(slot_mask[:, None], u, float("-inf"))


@triton.jit
def _slot_softmax(u):
    """Softmax over axis 0 (the slots) of [SLOTS, BLOCK] fp32 logits."""
    e = tl.exp(u - tl.max(u, 0)[None, :])
    return e / tl.sum(e, 0)[None, :]


@triton.jit
def _upsample_softmax_mix_fwd_kernel(
    M_ptr, X_ptr, Index_ptr, Out_ptr, Masks_ptr,
    stride_mb, stride_mn, stride_mh, stride_mw,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_in, stride_ib,
    stride_ob, stride_oc, stride_oh, stride_ow,
    N, B, C, h, w, H, W, scale_h, scale_w,
    SLOTS: tl.constexpr, BLOCK: tl.constexpr, NEAREST: tl.constexpr, WRITE_MASKS: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    pix_mask = offs < H * W
    r = offs // W
    col = offs % W
    slots = tl.arange(0, SLOTS)
    slot_mask = slots < N
    y0, y1, wy0, wy1 = _source_taps(r, scale_h, h, NEAREST)
    x0, x1, wx0, wx1 = _source_taps(col, scale_w, w, NEAREST)
    u = _upsampled_logits(M_ptr + b * stride_mb, stride_mn, stride_mh, stride_mw, slots, slot_mask,
                          y0, y1, wy0, wy1, x0, x1, wx0, wx1, pix_mask, NEAREST)
    masks = _slot_softmax(u)                                            # [SLOTS, BLOCK] fp32
    if WRITE_MASKS:   # contiguous [B,N,H,W] fp32
        tl.store(Masks_ptr + (b * N + slots[:, None]) * H * W + offs[None, :], masks,
                 mask=slot_mask[:, None] & pix_mask[None, :])
    src = tl.load(Index_ptr + slots.to(tl.int64) * stride_in + b * stride_ib, mask=slot_mask, other=0)
    src_ok = slot_mask & (src >= 0) & (src < B)
    x_ptrs = X_ptr + src[:, None] * stride_xb + r[None, :] * stride_xh + col[None, :] * stride_xw
    x_mask = src_ok[:, None] & pix_mask[None, :]
    o_ptrs = Out_ptr + b * stride_ob + r * stride_oh + col * stride_ow
    for c in range(0, C):
        xg = tl.load(x_ptrs + c * stride_xc, mask=x_mask, other=0.0).to(tl.float32)
        out = tl.sum(masks * xg, 0)
        tl.store(o_ptrs + c * stride_oc, out.to(Out_ptr.dtype.element_ty), mask=pix_mask)


@triton.jit
def _upsample_softmax_mix_bwd_rows_kernel(
    M_ptr, X_ptr, Index_ptr, DOut_ptr, DMasks_ptr, T_ptr,
    stride_mb, stride_mn, stride_mh, stride_mw,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_in, stride_ib,
    stride_db, stride_dc, stride_dh, stride_dw,
    stride_gb, stride_gn, stride_gh, stride_gw,
    N, B, C, h, w, H, W, scale_h, scale_w,
    SLOTS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_LW: tl.constexpr, NEAREST: tl.constexpr,
    HAS_DOUT: tl.constexpr, HAS_DMASKS: tl.constexpr,
):
    r = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    slots = tl.arange(0, SLOTS)
    slot_mask = slots < N
    lw = tl.arange(0, BLOCK_LW)
    rows = tl.zeros([BLOCK_W], dtype=tl.int32) + r
    y0, y1, wy0, wy1 = _source_taps(rows, scale_h, h, NEAREST)
    src = tl.load(Index_ptr + slots.to(tl.int64) * stride_in + b * stride_ib, mask=slot_mask, other=0)
    src_ok = slot_mask & (src >= 0) & (src < B)

    t_acc = tl.zeros([SLOTS, BLOCK_LW], dtype=tl.float32)
    for c0 in range(0, W, BLOCK_W):
        col = c0 + tl.arange(0, BLOCK_W)
        cmask = col < W
        x0, x1, wx0, wx1 = _source_taps(col, scale_w, w, NEAREST)
        u = _upsampled_logits(M_ptr + b * stride_mb, stride_mn, stride_mh, stride_mw, slots, slot_mask,
                              y0, y1, wy0, wy1, x0, x1, wx0, wx1, cmask, NEAREST)
        masks = _slot_softmax(u)
        g = tl.zeros([SLOTS, BLOCK_W], dtype=tl.float32)
        if HAS_DOUT:
            x_ptrs = X_ptr + src[:, None] * stride_xb + r * stride_xh + col[None, :] * stride_xw
            x_mask = src_ok[:, None] & cmask[None, :]
            d_ptrs = DOut_ptr + b * stride_db + r * stride_dh + col * stride_dw
            for c in range(0, C):
                dy = tl.load(d_ptrs + c * stride_dc, mask=cmask, other=0.0).to(tl.float32)
                xg = tl.load(x_ptrs + c * stride_xc, mask=x_mask, other=0.0).to(tl.float32)
                g += xg * dy[None, :]
        if HAS_DMASKS:
            g += tl.load(DMasks_ptr + b * stride_gb + slots[:, None].to(tl.int64) * stride_gn + r * stride_gh
                         + col[None, :] * stride_gw, mask=slot_mask[:, None] & cmask[None, :], other=0.0)
        du = masks * (g - tl.sum(masks * g, 0)[None, :])
        du = tl.where(slot_mask[:, None] & cmask[None, :], du, 0.0)
        # Horizontal adjoint: column col feeds low-res columns x0 (weight wx0) and x1 (wx1).
        wmat = tl.where(x0[:, None] == lw[None, :], wx0[:, None], 0.0) \
            + tl.where(x1[:, None] == lw[None, :], wx1[:, None], 0.0)      # [BLOCK_W, BLOCK_LW]
        t_acc += tl.sum(du[:, :, None] * wmat[None, :, :], axis=1)
    # T is contiguous [B,N,H,w] fp32.
    tl.store(T_ptr + ((b * N + slots[:, None]) * H + r) * w + lw[None, :], t_acc,
             mask=slot_mask[:, None] & (lw[None, :] < w))


@triton.jit
def _upsample_softmax_mix_bwd_cols_kernel(
    T_ptr, DM_ptr, h, w, H, scale_h,
    BLOCK_LH: tl.constexpr, BLOCK_LW: tl.constexpr, BLOCK_R: tl.constexpr, NEAREST: tl.constexpr,
):
    pid = tl.program_id(0)
    bn = tl.program_id(1).to(tl.int64)
    yy = pid * BLOCK_LH + tl.arange(0, BLOCK_LH)
    lw = tl.arange(0, BLOCK_LW)
    lw_mask = lw < w
    acc = tl.zeros([BLOCK_LH, BLOCK_LW], dtype=tl.float32)
    t_base = T_ptr + bn * H * w
    for r0 in range(0, H, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        rmask = rr < H
        y0, y1, wy0, wy1 = _source_taps(rr, scale_h, h, NEAREST)
        # Vertical adjoint: output row rr feeds low-res rows y0 (weight wy0) and y1 (wy1).
        wmat = tl.where(y0[None, :] == yy[:, None], wy0[None, :], 0.0) \
            + tl.where(y1[None, :] == yy[:, None], wy1[None, :], 0.0)       # [BLOCK_LH, BLOCK_R]
        wmat = tl.where(rmask[None, :], wmat, 0.0)
        t = tl.load(t_base + rr[:, None] * w + lw[None, :], mask=rmask[:, None] & lw_mask[None, :], other=0.0)
        acc += tl.sum(wmat[:, :, None] * t[None, :, :], axis=1)
    # DM is contiguous [B,N,h,w] in m's dtype.
    tl.store(DM_ptr + (bn * h + yy[:, None]) * w + lw[None, :], acc.to(DM_ptr.dtype.element_ty),
             mask=(yy[:, None] < h) & lw_mask[None, :])


@triton.jit
def _upsample_softmax_mix_bwd_dx_kernel(
    M_ptr, DOut_ptr, Order_ptr, Starts_ptr, DX_ptr,
    stride_mb, stride_mn, stride_mh, stride_mw,
    stride_db, stride_dc, stride_dh, stride_dw,
    stride_xb, stride_xc, stride_xh, stride_xw,
    N, B, C, h, w, H, W, scale_h, scale_w,
    SLOTS: tl.constexpr, CHANNELS: tl.constexpr, BLOCK: tl.constexpr, NEAREST: tl.constexpr,
):
    pid = tl.program_id(0)
    a = tl.program_id(1).to(tl.int64)          # the image x[a] whose gradient this program sums
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    pix_mask = offs < H * W
    r = offs // W
    col = offs % W
    slots = tl.arange(0, SLOTS)
    slot_mask = slots < N
    chans = tl.arange(0, CHANNELS)
    cmask = chans < C
    y0, y1, wy0, wy1 = _source_taps(r, scale_h, h, NEAREST)
    x0, x1, wx0, wx1 = _source_taps(col, scale_w, w, NEAREST)
    acc = tl.zeros([CHANNELS, BLOCK], dtype=tl.float32)
    start = tl.load(Starts_ptr + a)
    end = tl.load(Starts_ptr + a + 1)
    for t in range(start, end):        # contributors (i, b) with index[i, b] == a, in (i, b) order
        f = tl.load(Order_ptr + t)     # flat id i * B + b
        i = f // B
        b = f % B
        u = _upsampled_logits(M_ptr + b * stride_mb, stride_mn, stride_mh, stride_mw, slots, slot_mask,
                              y0, y1, wy0, wy1, x0, x1, wx0, wx1, pix_mask, NEAREST)
        mi = tl.sum(tl.where(slots[:, None] == i, _slot_softmax(u), 0.0), 0)      # M[b, i]
        dy = tl.load(DOut_ptr + b * stride_db + chans[:, None].to(tl.int64) * stride_dc + r[None, :] * stride_dh
                     + col[None, :] * stride_dw, mask=cmask[:, None] & pix_mask[None, :], other=0.0)
        acc += mi[None, :] * dy.to(tl.float32)
    tl.store(DX_ptr + a * stride_xb + chans[:, None].to(tl.int64) * stride_xc + r[None, :] * stride_xh
             + col[None, :] * stride_xw, acc.to(DX_ptr.dtype.element_ty),
             mask=cmask[:, None] & pix_mask[None, :])


# ---------------------------------------------------------------------------- host wrappers
def _scales(m: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    # PyTorch's (float)in/out; the kernel receives it as fp32.
    return m.shape[2] / x.shape[2], m.shape[3] / x.shape[3]


def _fwd_fake(m: torch.Tensor, x: torch.Tensor, index: torch.Tensor, write_masks: bool, nearest: bool):
    b, n = m.shape[:2]
    masks_shape = (b, n, x.shape[2], x.shape[3]) if write_masks else (0,)
    return torch.empty_like(x), torch.empty(masks_shape, device=x.device, dtype=torch.float32)


@library_op("adautomix_fast::upsample_softmax_mix_fwd", fake=_fwd_fake)
def upsample_softmax_mix_forward(m: torch.Tensor, x: torch.Tensor, index: torch.Tensor, write_masks: bool,
                                 nearest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_mix, masks): x_mix like x; masks fp32 [B,N,H,W] when ``write_masks`` else empty."""
    b, n, h, w = m.shape
    _, c, H, W = x.shape
    cfg = mix_config(n, c, h, w, W)
    out = torch.empty_like(x)
    masks = torch.empty((b, n, H, W) if write_masks else (0,), device=x.device, dtype=torch.float32)
    scale_h, scale_w = _scales(m, x)
    grid = (triton.cdiv(H * W, cfg.block), b)
    wrap_triton(_upsample_softmax_mix_fwd_kernel)[grid](
        m, x, index, out, masks,
        *m.stride(), *x.stride(), *index.stride(), *out.stride(),
        n, b, c, h, w, H, W, scale_h, scale_w,
        SLOTS=cfg.slots, BLOCK=cfg.block, NEAREST=nearest, WRITE_MASKS=write_masks,
        num_warps=cfg.num_warps)
    return out, masks


def _bwd_fake(m: torch.Tensor, x: torch.Tensor, index: torch.Tensor, dout: Optional[torch.Tensor],
              dmasks: Optional[torch.Tensor], need_dm: bool, need_dx: bool, nearest: bool):
    dm = torch.empty(m.shape, device=m.device, dtype=m.dtype) if need_dm else m.new_empty((0,))
    dx = torch.empty_like(x) if need_dx else x.new_empty((0,))
    return dm, dx


@library_op("adautomix_fast::upsample_softmax_mix_bwd", fake=_bwd_fake)
def upsample_softmax_mix_backward(m: torch.Tensor, x: torch.Tensor, index: torch.Tensor,
                                  dout: Optional[torch.Tensor], dmasks: Optional[torch.Tensor],
                                  need_dm: bool, need_dx: bool, nearest: bool
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dm, dx): dm contiguous in m's dtype, dx like x; an empty tensor where not needed."""
    b, n, h, w = m.shape
    _, c, H, W = x.shape
    cfg = mix_config(n, c, h, w, W)
    scale_h, scale_w = _scales(m, x)
    dm = torch.empty(m.shape, device=m.device, dtype=m.dtype) if need_dm else m.new_empty((0,))
    dx = torch.empty_like(x) if need_dx else x.new_empty((0,))
    has_dout = dout is not None
    has_dmasks = dmasks is not None
    dout_t = dout if dout is not None else x          # placeholder pointer, never read
    dmasks_t = dmasks if dmasks is not None else m    # placeholder pointer, never read
    if need_dm:
        rows = torch.empty((b, n, H, w), device=m.device, dtype=torch.float32)
        wrap_triton(_upsample_softmax_mix_bwd_rows_kernel)[(H, b)](
            m, x, index, dout_t, dmasks_t, rows,
            *m.stride(), *x.stride(), *index.stride(), *dout_t.stride(), *dmasks_t.stride(),
            n, b, c, h, w, H, W, scale_h, scale_w,
            SLOTS=cfg.slots, BLOCK_W=cfg.block_w, BLOCK_LW=cfg.block_lw, NEAREST=nearest,
            HAS_DOUT=has_dout, HAS_DMASKS=has_dmasks, num_warps=cfg.num_warps)
        wrap_triton(_upsample_softmax_mix_bwd_cols_kernel)[(triton.cdiv(h, cfg.block_lh), b * n)](
            rows, dm, h, w, H, scale_h,
            BLOCK_LH=cfg.block_lh, BLOCK_LW=cfg.block_lw, BLOCK_R=cfg.block_r, NEAREST=nearest,
            num_warps=cfg.num_warps)
    if need_dx:
        if has_dout:
            # Contributors of each image: flat ids i*B + b sorted by index value (stable, so in
            # (i, b) order); starts[a] .. starts[a+1] are those of image a. All on the device.
            keys, order = torch.sort(index.reshape(-1), stable=True)
            starts = torch.searchsorted(keys, torch.arange(b + 1, device=index.device, dtype=keys.dtype))
            wrap_triton(_upsample_softmax_mix_bwd_dx_kernel)[(triton.cdiv(H * W, cfg.dx_block), b)](
                m, dout, order, starts, dx,
                *m.stride(), *dout.stride(), *dx.stride(),
                n, b, c, h, w, H, W, scale_h, scale_w,
                SLOTS=cfg.slots, CHANNELS=cfg.channels, BLOCK=cfg.dx_block, NEAREST=nearest,
                num_warps=cfg.num_warps)
        else:
            dx.zero_()
    return dm, dx


def _setup_context(ctx, inputs, output):
    m, x, index, write_masks, nearest = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(m, x, index)
    ctx.write_masks = write_masks
    ctx.nearest = nearest


def _backward(ctx, dout, dmasks):
    m, x, index = ctx.saved_tensors
    need_dm, need_dx = ctx.needs_input_grad[:2]
    if not ctx.write_masks:
        dmasks = None
    if (dout is None and dmasks is None) or not (need_dm or need_dx):
        return None, None, None, None, None
    dm, dx = upsample_softmax_mix_backward(m, x, index, dout, dmasks, need_dm, need_dx, ctx.nearest)
    return (dm if need_dm else None,    # dL/dm
            dx if need_dx else None,    # dL/dx
            None, None, None)           # index, write_masks, nearest


upsample_softmax_mix_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------- public function
def upsample_softmax_mix(m: torch.Tensor, x: torch.Tensor, index: torch.Tensor, return_masks: bool = False,
                         *, mode: str = "bilinear"):
    """x_mix[b] = sum_i M[b,i] * x[index[i,b]] with M = softmax_N(upsample(m) to x's size).

    m: [B,N,h,w] logits (fp32/fp16/bf16); x: [B,C,H,W] (NCHW or channels-last); index: [N,B]
    int64. Returns x_mix in x's dtype and memory format, and the fp32 masks [B,N,H,W] when
    ``return_masks``. ``mode``: "bilinear" (align_corners=False, the default) or "nearest".
    Differentiable in m (and in x when x requires grad).
    """
    check_float("m", m, 4)
    check_float("x", x, 4)
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype != torch.int64:
        raise TypeError(f"index must be int64, got {index.dtype}")
    if index.dim() != 2:
        raise ValueError(f"index must be 2-D [N,B], got shape {list(index.shape)}")
    b, n = m.shape[:2]
    if tuple(index.shape) != (n, b):
        raise ValueError(f"index must have shape [N,B] = [{n},{b}] to match m {list(m.shape)}, "
                         f"got {list(index.shape)}")
    if x.shape[0] != b:
        raise ValueError(f"x and m must have the same batch size, got x {list(x.shape)} and m {list(m.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if m.numel() == 0 or x.numel() == 0:
        raise ValueError(f"upsample_softmax_mix needs non-empty inputs, got m {list(m.shape)}, x {list(x.shape)}")
    check_devices(m=m, x=x, index=index)
    mix_config(n, x.shape[1], m.shape[2], m.shape[3], x.shape[3])   # sizes within range
    if check_index_values() and (index.device.type == "cpu" or debug_checks()):
        if bool(((index < 0) | (index >= b)).any()):
            raise ValueError(f"index values must lie in [0, {b}) (the batch of x), got "
                             f"min {int(index.min())}, max {int(index.max())}")
    out, masks = upsample_softmax_mix_forward(m, x, index, bool(return_masks), mode == "nearest")
    return (out, masks) if return_masks else out


__all__ = ["upsample_softmax_mix", "upsample_softmax_mix_forward", "upsample_softmax_mix_backward"]
