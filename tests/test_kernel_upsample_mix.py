"""adautomix_fast.kernels.upsample_softmax_mix against its PyTorch twin
(adautomix_fast.methods.generator.upsample_softmax_mix_reference): values, masks, memory format, every
gradient, finite differences, determinism, torch.compile, bad input, and the generator / step
dispatching to the kernels. On a CPU the kernels run in the Triton interpreter (tests/conftest.py
sets TRITON_INTERPRET=1), so images stay small; GPU-marked tests add bf16 and the real sizes
(ResNet-50: 14x14 -> 224x224, CIFAR ResNet-18: 8x8 -> 32x32)."""

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F

from adautomix_fast.kernels import _launch, upsample_softmax_mix
from adautomix_fast.methods.adautomix import AdAutoMix, MixPlan
from adautomix_fast.methods.generator import MaskGenerator, upsample_softmax_mix_reference

from kernel_helpers import build_for_sm90, replace_kernels_with_tripwires

# The module (the package attribute of that name is the public function).
usm = importlib.import_module("adautomix_fast.kernels.upsample_softmax_mix")

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
gpu = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cpu_tests_need_the_interpreter(request):
    """CPU tensors only run through the Triton interpreter (conftest sets it without a GPU); on
    a GPU machine the gpu-marked tests below cover the compiled kernels."""
    if "gpu" not in request.keywords and not _launch.INTERPRET:
        pytest.skip("CPU kernel tests need TRITON_INTERPRET=1 (set by tests/conftest.py without a GPU)")


def make_inputs(n, b, h, w, size, c=3, seed=0, channels_last=False, device=CPU, repeats=False):
    """m [B,N,h,w] logits, x [B,C,H,W] images, index [N,B] (permutation rows, or with repeats)."""
    g = torch.Generator().manual_seed(seed)
    m = 2.0 * torch.randn(b, n, h, w, generator=g)
    x = torch.randn(b, c, *size, generator=g)
    if repeats:
        index = torch.randint(0, b, (n, b), generator=g)
    else:
        index = torch.stack([torch.randperm(b, generator=g) for _ in range(n)])
    m, x, index = m.to(device), x.to(device), index.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return m, x, index


def leaves(*tensors, dtype=None):
    return [t.detach().clone().to(dtype or t.dtype).requires_grad_(True) for t in tensors]


def upstream(x, n, seed=1):
    """One shared upstream gradient for x_mix (x's dtype and layout) and for the masks."""
    g = torch.Generator().manual_seed(seed)
    b, _, hh, ww = x.shape
    dout = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        dout = dout.contiguous(memory_format=torch.channels_last)
    return dout, torch.randn(b, n, hh, ww, generator=g).to(x.device)


def run(fn, m, x, index, dout, dmasks, mode="bilinear", dtype=None):
    lm, lx = leaves(m, x, dtype=dtype)
    out, masks = fn(lm, lx, index, return_masks=True, mode=mode)
    loss = (out.float() * dout.float()).sum() + (masks * dmasks).sum()
    dm, dx = torch.autograd.grad(loss, (lm, lx))
    return out, masks, dm, dx


def fused(m, x, index, dout, dmasks, mode="bilinear"):
    return run(upsample_softmax_mix, m, x, index, dout, dmasks, mode)


def reference(m, x, index, dout, dmasks, mode="bilinear", dtype=torch.float32):
    return run(upsample_softmax_mix_reference, m, x, index, dout, dmasks, mode, dtype=dtype)


FP32_TOL = dict(atol=1e-5, rtol=1e-5)


def check(n, b, h, w, scale, dtype=torch.float32, channels_last=False, mode="bilinear", c=3,
          device=CPU, size=None, repeats=False, seed=0):
    size = size or (h * scale, w * scale)
    m, x, index = make_inputs(n, b, h, w, size, c, seed, channels_last, device, repeats)
    dout, dmasks = upstream(x, n)
    ref = reference(m, x, index, dout, dmasks, mode)
    lx = x.to(dtype)
    if channels_last:
        lx = lx.contiguous(memory_format=torch.channels_last)
    out, masks, dm, dx = fused(m, lx, index, dout.to(dtype), dmasks, mode)
    # dtype and memory format of every output
    assert out.dtype == dtype and out.shape == x.shape
    assert out.stride() == lx.stride()
    assert masks.dtype == torch.float32 and masks.shape == (b, n, *size) and masks.is_contiguous()
    assert dm.dtype == m.dtype and dx.dtype == dtype and dx.stride() == lx.stride()
    if dtype == torch.float32:
        for name, f, r in zip(("x_mix", "masks", "dm", "dx"), (out, masks, dm, dx), ref):
            torch.testing.assert_close(f, r, **FP32_TOL, msg=lambda s: f"{name}: {s}")
        return
    # Half precision: x and x_mix are stored in `dtype`, the math is fp32 on both sides, so
    # the fused error against the fp32 reference (on the same rounded x) is at most about the
    # output rounding; PyTorch's own half math (the twin run in `dtype`) is the yardstick.
    ref_lp = reference(m, lx.float(), index, dout.to(dtype).float(), dmasks, mode)
    own = run(upsample_softmax_mix_reference, m.to(dtype), lx, index, dout.to(dtype), dmasks.to(dtype), mode)
    eps = torch.finfo(dtype).eps
    for name, f, o, r in zip(("x_mix", "masks", "dm", "dx"), (out, masks, dm, dx), own, ref_lp):
        err, own_err = (f.float() - r).abs().max().item(), (o.float() - r).abs().max().item()
        floor = 2 * eps * max(r.abs().max().item(), 1e-3)
        assert err <= 2 * own_err + floor, f"{name}: fused error {err:.3g} vs PyTorch {dtype} error {own_err:.3g}"


# ---------------------------------------------------------------------------- values and gradients
# (n, b, h, w, scale, channels_last): N in 2..5, scales 4 and 16, NCHW and channels-last, odd B.
FP32_CASES = [
    (2, 3, 2, 3, 16, False),
    (3, 3, 2, 2, 16, True),
    (4, 1, 3, 2, 4, False),
    (5, 3, 3, 3, 4, True),
    (2, 5, 4, 4, 4, True),
    (3, 1, 3, 4, 4, False),
]


@pytest.mark.parametrize("n,b,h,w,scale,channels_last", FP32_CASES)
def test_fp32_mix_masks_and_gradients_match_reference(n, b, h, w, scale, channels_last):
    check(n, b, h, w, scale, channels_last=channels_last)


@pytest.mark.parametrize("n,b,h,w,scale,channels_last", [(2, 3, 2, 2, 16, True), (3, 3, 3, 2, 4, False),
                                                          (5, 1, 2, 3, 4, True)])
def test_fp16_within_twice_pytorch_fp16_error(n, b, h, w, scale, channels_last):
    check(n, b, h, w, scale, dtype=torch.float16, channels_last=channels_last)


@pytest.mark.parametrize("h,w,size", [(3, 4, (7, 10)), (1, 2, (5, 9)), (4, 4, (4, 4)), (3, 3, (12, 5))])
def test_non_integer_scales_and_edge_clamping_follow_pytorch(h, w, size):
    """align_corners=False source coordinates, clamping at 0 and at the last row/column, for
    ratios that are not integers (and for no upsampling at all)."""
    check(3, 3, h, w, 0, size=size)


@pytest.mark.parametrize("n,scale,channels_last", [(2, 4, False), (3, 16, True)])
def test_nearest_mode(n, scale, channels_last):
    check(n, 3, 2, 3, scale, mode="nearest", channels_last=channels_last)


def test_index_with_repeats_sends_each_image_the_sum_of_its_uses():
    """index rows need not be permutations: an image used k times gets k contributions."""
    check(3, 5, 2, 2, 4, repeats=True, seed=3)


def test_gradient_for_masks_only_and_for_m_only():
    m, x, index = make_inputs(3, 3, 2, 2, (8, 8))
    dout, dmasks = upstream(x, 3)
    lm, lx = leaves(m, x)
    _, masks = upsample_softmax_mix(lm, lx, index, return_masks=True)
    (masks * dmasks).sum().backward()           # x_mix unused: its gradient is None
    rm, rx = leaves(m, x)
    _, rmasks = upsample_softmax_mix_reference(rm, rx, index, return_masks=True)
    (rmasks * dmasks).sum().backward()
    torch.testing.assert_close(lm.grad, rm.grad, **FP32_TOL)
    assert lx.grad is None or torch.count_nonzero(lx.grad) == 0
    # x without requires_grad: only dm, and no masks requested
    lm2 = m.clone().requires_grad_(True)
    out = upsample_softmax_mix(lm2, x, index)
    assert isinstance(out, torch.Tensor)
    (out * dout).sum().backward()
    rm2 = m.clone().requires_grad_(True)
    (upsample_softmax_mix_reference(rm2, x, index) * dout).sum().backward()
    torch.testing.assert_close(lm2.grad, rm2.grad, **FP32_TOL)


def test_strided_inputs_and_expanded_upstream_gradient():
    m, x, index = make_inputs(2, 3, 2, 2, (8, 8), c=3)
    m_t = m.transpose(2, 3).contiguous().transpose(2, 3)
    x_t = x[:, :, :, :]                                         # a view with the same strides
    x_wide = torch.cat([x, x], dim=1)[:, ::2]                   # channel stride 2
    index_t = index.t().contiguous().t()
    assert not m_t.is_contiguous() and not index_t.is_contiguous() and not x_wide.is_contiguous()
    for xx in (x_t, x_wide):
        lm, lx = leaves(m_t, xx)
        upsample_softmax_mix(lm, lx, index_t).sum().backward()   # expanded ones upstream
        rm, rx = leaves(m, xx)
        upsample_softmax_mix_reference(rm, rx, index).sum().backward()
        torch.testing.assert_close(lm.grad, rm.grad, **FP32_TOL)
        torch.testing.assert_close(lx.grad, rx.grad, **FP32_TOL)


# ---------------------------------------------------------------------------- finite differences
def test_backward_kernels_match_float64_finite_differences():
    n, b, h, w, size = 3, 2, 2, 2, (8, 8)
    m, x, index = make_inputs(n, b, h, w, size, c=2, seed=5, repeats=True)
    dout, dmasks = upstream(x, n, seed=6)
    _, _, dm, dx = fused(m, x, index, dout, dmasks)

    def f64(m_, x_):
        up = F.interpolate(m_, size=size, mode="bilinear", align_corners=False).softmax(1)
        mix = sum(up[:, i:i + 1] * x_[index[i]] for i in range(n))
        return float((mix * dout.double()).sum() + (up * dmasks.double()).sum())

    g = torch.Generator().manual_seed(7)
    eps = 1e-5
    md, xd = m.double(), x.double()
    for name, grad, shape in (("m", dm, m.shape), ("x", dx, x.shape)):
        u = torch.randn(shape, generator=g, dtype=torch.float64)
        if name == "m":
            numeric = (f64(md + eps * u, xd) - f64(md - eps * u, xd)) / (2 * eps)
        else:
            numeric = (f64(md, xd + eps * u) - f64(md, xd - eps * u)) / (2 * eps)
        analytic = float((grad.double() * u).sum())
        assert abs(numeric - analytic) <= 1e-4 * max(1.0, abs(numeric)), (name, numeric, analytic)


def test_kernel_forward_and_backward_agree_by_finite_differences():
    n, b, size = 2, 3, (8, 12)
    m, x, index = make_inputs(n, b, 2, 3, size, c=2, seed=9)
    dout, dmasks = upstream(x, n, seed=10)
    _, _, dm, dx = fused(m, x, index, dout, dmasks)

    def f(m_, x_):
        out, masks = upsample_softmax_mix(m_, x_, index, return_masks=True)
        return float((out.double() * dout).sum() + (masks.double() * dmasks).sum())

    g = torch.Generator().manual_seed(11)
    eps = 1e-2
    with torch.no_grad():
        u = torch.randn(m.shape, generator=g)
        numeric = (f(m + eps * u, x) - f(m - eps * u, x)) / (2 * eps)
        assert abs(numeric - float((dm * u).sum())) <= 2e-3 * max(1.0, abs(numeric))
        u = torch.randn(x.shape, generator=g)
        numeric = (f(m, x + eps * u) - f(m, x - eps * u)) / (2 * eps)
        assert abs(numeric - float((dx * u).sum())) <= 2e-3 * max(1.0, abs(numeric))


# ---------------------------------------------------------------------------- determinism, compile
def run_twice_bitwise(device, n, b, h, w, size, dtype=torch.float32):
    m, x, index = make_inputs(n, b, h, w, size, device=device, channels_last=True, repeats=True)
    x = x.to(dtype)
    dout, dmasks = upstream(x, n)
    first = fused(m, x, index, dout, dmasks)
    second = fused(m, x, index, dout, dmasks)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_backward_is_deterministic():
    run_twice_bitwise(CPU, 3, 5, 2, 2, (16, 16))


def test_compiles_with_fullgraph_and_matches_eager():
    """Interpreted Triton lives in an opaque custom op (docs/compile.md, fact 4)."""
    m, x, index = make_inputs(3, 3, 2, 2, (8, 8))
    dout, _ = upstream(x, 3)

    def step(m_, x_, index_):
        return upsample_softmax_mix(m_, x_, index_) * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    lm, lx = leaves(m, x)
    out = compiled(lm, lx, index)
    dm, dx = torch.autograd.grad(out, (lm, lx), dout)
    em, ex = leaves(m, x)
    e_out = upsample_softmax_mix(em, ex, index) * 2.0
    e_dm, e_dx = torch.autograd.grad(e_out, (em, ex), dout)
    torch.testing.assert_close(out, e_out)
    torch.testing.assert_close(dm, e_dm)
    torch.testing.assert_close(dx, e_dx)


def test_opcheck_forward_op():
    m, x, index = make_inputs(2, 3, 2, 2, (8, 8))
    lm, lx = leaves(m, x)
    torch.library.opcheck(usm.upsample_softmax_mix_forward, (lm, lx, index, True, False),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_kernels_build_for_sm90_without_a_gpu():
    build_for_sm90("mix")


# ---------------------------------------------------------------------------- bad input
@pytest.fixture
def no_launch(monkeypatch):
    replace_kernels_with_tripwires(monkeypatch, usm, "_upsample_softmax_mix_", 4)


@pytest.mark.parametrize("case,error,match", [
    ("n_mismatch", ValueError, "index must have shape"),
    ("index_int32", TypeError, "int64"),
    ("index_float", TypeError, "int64"),
    ("index_high", ValueError, r"index values must lie in \[0, 3\)"),
    ("index_negative", ValueError, "index values"),
    ("x_3d", ValueError, "x must be 4-D"),
    ("m_3d", ValueError, "m must be 4-D"),
    ("batch_mismatch", ValueError, "same batch size"),
    ("x_int", TypeError, "float32, float16 or bfloat16"),
    ("device", ValueError, "one device"),
    ("mode", ValueError, "mode"),
    ("index_1d", ValueError, "2-D"),
])
def test_bad_input_raises_one_line_error_before_any_launch(no_launch, case, error, match):
    m, x, index = make_inputs(2, 3, 2, 2, (8, 8))
    kwargs = {}
    if case == "n_mismatch":
        index = torch.cat([index, index[:1]])
    elif case == "index_int32":
        index = index.int()
    elif case == "index_float":
        index = index.float()
    elif case == "index_high":
        index = index.clone()
        index[1, 2] = 3
    elif case == "index_negative":
        index = index.clone()
        index[0, 0] = -1
    elif case == "x_3d":
        x = x[0]
    elif case == "m_3d":
        m = m[0]
    elif case == "batch_mismatch":
        x = x[:2]
    elif case == "x_int":
        x = x.long()
    elif case == "device":
        x = x.to("meta")
    elif case == "mode":
        kwargs["mode"] = "bicubic"
    elif case == "index_1d":
        index = index[0]
    with pytest.raises(error, match=match) as info:
        upsample_softmax_mix(m, x, index, **kwargs)
    assert "\n" not in str(info.value)


def test_out_of_range_index_reads_zeros_inside_the_kernel():
    """What the op does where the public function cannot check values without a host sync
    (CUDA tensors under torch.compile): a slot with an out-of-range index contributes nothing
    instead of reading out of bounds."""
    m, x, index = make_inputs(3, 3, 2, 2, (8, 8))
    bad = index.clone()
    bad[1, 0], bad[2, 2] = 7, -1
    out, masks = usm.upsample_softmax_mix_forward(m, x, bad, True, False)
    expected = torch.zeros_like(x)
    for s in range(3):
        for i in range(3):
            if 0 <= int(bad[i, s]) < 3:
                expected[s] += masks[s, i] * x[bad[i, s]]
    torch.testing.assert_close(out, expected, **FP32_TOL)


# ---------------------------------------------------------------------------- generator dispatch
def test_mask_generator_triton_matches_torch_masks_mix_and_gradients():
    n, b, c = 3, 5, 16
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(b, c, 4, 4, generator=g)
    x = torch.randn(b, 3, 16, 16, generator=g).contiguous(memory_format=torch.channels_last)
    index = torch.stack([torch.randperm(b, generator=g) for _ in range(n)])
    lam = torch.tensor([0.2, 0.3, 0.5])
    torch.manual_seed(0)
    gen_torch = MaskGenerator(c, lam_concat=True, norm=True)
    torch.nn.init.normal_(gen_torch.value.weight, std=0.5)       # masks far from uniform
    gen_triton = copy.deepcopy(gen_torch)
    gen_triton.kernels = "triton"
    dout = torch.randn(x.shape, generator=g)
    results = []
    for gen in (gen_torch, gen_triton):
        lf = feats.clone().requires_grad_(True)
        m = gen.mask_logits(lf, index, lam)
        x_mix, masks = gen.mix(m, x, index, return_masks=True)
        x_fwd = gen(lf, x, index, lam)
        (x_mix * dout).sum().backward()
        results.append((m, x_mix, masks, x_fwd, lf.grad, [p.grad for p in gen.parameters()]))
    (m0, mix0, masks0, fwd0, gf0, gp0), (m1, mix1, masks1, fwd1, gf1, gp1) = results
    torch.testing.assert_close(m1, m0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mix1, mix0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks1, masks0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fwd1, fwd0, atol=1e-5, rtol=1e-5)
    assert mix1.is_contiguous(memory_format=torch.channels_last)
    # Parameter gradients are sums over the batch and positions, through BatchNorm: fp32
    # summation-order differences, measured against the scale of all of them (the value conv's
    # bias has an exactly-zero gradient, a softmax over slots ignores a shared offset).
    torch.testing.assert_close(gf1, gf0, atol=1e-4 * gf0.abs().max().item(), rtol=1e-4)
    scale = max(r.abs().max().item() for r in gp0)
    for a, r in zip(gp1, gp0):
        torch.testing.assert_close(a, r, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("n", [2, 3])
def test_step_losses_with_triton_generator_ops_match_torch(n):
    """AdAutoMix.step_losses mixes through MaskGenerator.mix: same losses and gradients."""
    b = 6
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(b, 3, 16, 16, generator=g), torch.randint(0, 5, (b,), generator=g)
    lam = torch.tensor([0.3, 0.7] if n == 2 else [0.2, 0.3, 0.5])
    index_gen = torch.stack([torch.randperm(b, generator=g) for _ in range(n)])
    index_cls = torch.stack([torch.randperm(b, generator=g) for _ in range(n)])
    plan = MixPlan(lam, lam, index_gen, index_cls, torch.tensor(False))
    torch.manual_seed(0)
    model = AdAutoMix("tiny", 5, cifar_stem=True, mix_samples=n)
    twin = copy.deepcopy(model)
    twin.generator.kernels = "triton"
    out = []
    for mdl in (model, twin):
        terms = mdl.step_losses(x, y, plan)
        terms["loss"].backward()
        out.append((terms, [p.grad for p in mdl.generator.parameters()]))
    (t0, g0), (t1, g1) = out
    for key in ("loss", "loss_amce", "loss_gen", "loss_k", "cos"):
        torch.testing.assert_close(t1[key], t0[key], atol=1e-5, rtol=1e-5, msg=key)
    scale = max(r.abs().max().item() for r in g0)
    for a, r in zip(g1, g0):
        torch.testing.assert_close(a, r, atol=1e-4 * scale, rtol=1e-4)


# ---------------------------------------------------------------------------- GPU
# GPU sizes: ResNet-50 (N=2, 14x14 -> 224x224, channels-last) and CIFAR ResNet-18 (N=3,
# 8x8 -> 32x32). Few cases: each (dtype, N, flags) compiles its own kernels and `make gpu-check`
# gives all GPU tests 180 s.
@gpu
@pytest.mark.parametrize("n,b,h,scale,channels_last", [(2, 4, 14, 16, True), (3, 5, 8, 4, False)])
def test_gpu_fp32_values_and_gradients(n, b, h, scale, channels_last):
    check(n, b, h, h, scale, channels_last=channels_last, device=CUDA)


@gpu
@pytest.mark.parametrize("n,b,h,scale,channels_last,dtype", [(2, 4, 14, 16, True, torch.bfloat16),
                                                            (3, 5, 8, 4, False, torch.bfloat16),
                                                            (3, 5, 8, 4, True, torch.float16)])
def test_gpu_half_precision_within_twice_pytorch_error(n, b, h, scale, channels_last, dtype):
    check(n, b, h, h, scale, dtype=dtype, channels_last=channels_last, device=CUDA)


@gpu
def test_gpu_nearest_and_repeats():
    check(3, 5, 8, 8, 4, mode="nearest", device=CUDA, repeats=True)


@gpu
def test_gpu_index_values_checked_only_in_debug_mode(monkeypatch):
    m, x, index = make_inputs(2, 4, 14, 14, (224, 224), device=CUDA, channels_last=True)
    bad = index.clone()
    bad[1, 0] = 9
    monkeypatch.setenv("ADAUTOMIX_KERNEL_CHECKS", "1")
    with pytest.raises(ValueError, match="index values"):
        upsample_softmax_mix(m, x, bad)
    monkeypatch.delenv("ADAUTOMIX_KERNEL_CHECKS")
    assert torch.isfinite(upsample_softmax_mix(m, x, bad)).all()   # no sync, no fault: zeros read


@gpu
def test_gpu_backward_is_deterministic():
    run_twice_bitwise(CUDA, 2, 16, 14, 14, (224, 224), torch.bfloat16)


@gpu
def test_gpu_inductor_compile_fullgraph():
    m, x, index = make_inputs(2, 4, 14, 14, (224, 224), device=CUDA, channels_last=True)
    dout, _ = upstream(x, 2)
    compiled = torch.compile(lambda a, b_, c: upsample_softmax_mix(a, b_, c) * 2.0, fullgraph=True)
    lm, lx = leaves(m, x)
    out = compiled(lm, lx, index)
    dm, dx = torch.autograd.grad(out, (lm, lx), dout)
    em, ex = leaves(m, x)
    e_out = upsample_softmax_mix(em, ex, index) * 2.0
    e_dm, e_dx = torch.autograd.grad(e_out, (em, ex), dout)
    torch.testing.assert_close(out, e_out)
    torch.testing.assert_close(dm, e_dm)
    torch.testing.assert_close(dx, e_dx)


@gpu
def test_gpu_mask_generator_triton_matches_torch():
    b, c = 4, 64
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(b, c, 14, 14, generator=g).cuda()
    x = torch.randn(b, 3, 224, 224, generator=g).cuda().contiguous(memory_format=torch.channels_last)
    index = torch.stack([torch.arange(b), torch.randperm(b, generator=g)]).cuda()
    lam = torch.tensor([0.4, 0.6], device="cuda")
    gen_torch = MaskGenerator(c, lam_concat=True, norm=True).cuda()
    gen_triton = copy.deepcopy(gen_torch)
    gen_triton.kernels = "triton"
    outs = []
    for gen in (gen_torch, gen_triton):
        x_mix, masks = gen(feats, x, index, lam, return_masks=True)
        x_mix.float().square().sum().backward()
        outs.append((x_mix, masks, [p.grad for p in gen.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-4)
    for a, r in zip(outs[1][2], outs[0][2]):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-3)
