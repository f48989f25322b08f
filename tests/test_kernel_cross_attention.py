"""adautomix_fast.kernels.cross_attention_mask against its PyTorch twin
(adautomix_fast.methods.generator.cross_attention_mask_reference): values, every gradient, finite
differences, determinism, torch.compile, bad input. On a CPU the kernels run in the Triton
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay small; GPU-marked tests add
bf16 and the ResNet-50 sizes (P = 196, D = 512)."""

import importlib

import pytest
import torch

from adautomix_fast.kernels import _launch, cross_attention_mask
from adautomix_fast.methods.generator import cross_attention_mask_reference

from kernel_helpers import build_for_sm90, replace_kernels_with_tripwires

# The module (the package attribute of that name is the public function).
cam = importlib.import_module("adautomix_fast.kernels.cross_attention_mask")

CPU = torch.device("cpu")
gpu = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cpu_tests_need_the_interpreter(request):
    """CPU tensors only run through the Triton interpreter (conftest sets it without a GPU); on
    a GPU machine the gpu-marked tests below cover the compiled kernels."""
    if "gpu" not in request.keywords and not _launch.INTERPRET:
        pytest.skip("CPU kernel tests need TRITON_INTERPRET=1 (set by tests/conftest.py without a GPU)")


def make_inputs(n, b, p, d, seed=0, device=CPU):
    """fp32 q, k, v on ``device`` (queries/keys after a ReLU, as in the generator)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, b, p, d, generator=g).relu()
    k = torch.randn(n, b, p, d, generator=g).relu()
    v = torch.randn(n, b, p, generator=g)
    return q.to(device), k.to(device), v.to(device)


def leaves(*tensors, dtype=None):
    return [t.detach().clone().to(dtype or t.dtype).requires_grad_(True) for t in tensors]


def fused(q, k, v, dout, scale=None):
    """Output and (dq, dk, dv) of the kernel, from fresh leaves in q's dtype."""
    lq, lk, lv = leaves(q, k, v)
    out = cross_attention_mask(lq, lk, lv, scale)
    grads = torch.autograd.grad(out, (lq, lk, lv), dout)
    return out, grads


def reference(q, k, v, dout, scale=None, dtype=torch.float32):
    """Output and gradients of the twin, autograd in ``dtype`` on leaves upcast from the inputs."""
    lq, lk, lv = leaves(q, k, v, dtype=dtype)
    out = cross_attention_mask_reference(lq, lk, lv, scale)
    grads = torch.autograd.grad(out, (lq, lk, lv), dout.to(out.dtype))
    return out, grads


def torch_lowp(q, k, v, dout, scale=None):
    """PyTorch's own math in q's (half) dtype: what 'PyTorch's error in that dtype' means."""
    lq, lk, lv = leaves(q, k, v)
    s = q.shape[-1] ** -0.5 if scale is None else scale
    k_others = lk.sum(0, keepdim=True) - lk
    attn = (torch.matmul(lq, k_others.transpose(-1, -2)) * s).softmax(-1)
    out = torch.matmul(attn, lv.unsqueeze(-1)).squeeze(-1)
    grads = torch.autograd.grad(out, (lq, lk, lv), dout.to(out.dtype))
    return out, grads


FP32_TOL = {"cpu": dict(atol=1e-5, rtol=1e-4), "cuda": dict(atol=5e-5, rtol=5e-4)}


def check_fp32(n, b, p, d, device=CPU, seed=0, scale=None):
    q, k, v = make_inputs(n, b, p, d, seed, device)
    dout = torch.randn(n, b, p, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    out, grads = fused(q, k, v, dout, scale)
    ref, ref_grads = reference(q, k, v, dout, scale)
    assert out.dtype == torch.float32 and out.shape == (n, b, p)
    tol = FP32_TOL[device.type]
    torch.testing.assert_close(out, ref, **tol)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == torch.float32 and g.shape == r.shape
        torch.testing.assert_close(g, r, **tol, msg=lambda m: f"d{name}: {m}")


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def check_lowp(n, b, p, d, dtype, device=CPU, seed=0):
    """Fused error against the fp32 reference on the fp32 inputs is at most ~2x PyTorch's own
    error in ``dtype`` (plus a small floor for when PyTorch happens to be exact)."""
    q, k, v = make_inputs(n, b, p, d, seed, device)
    dout = torch.randn(n, b, p, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    ref, ref_grads = reference(q, k, v, dout)
    lq, lk, lv = (t.to(dtype) for t in (q, k, v))
    out, grads = fused(lq, lk, lv, dout)
    own, own_grads = torch_lowp(lq, lk, lv, dout)
    assert out.dtype == torch.float32
    eps = torch.finfo(dtype).eps
    for name, f, o, r in [("m", out, own, ref)] + list(zip(["dq", "dk", "dv"], grads, own_grads, ref_grads)):
        assert f.dtype == (torch.float32 if name == "m" else dtype), name
        floor = 4 * eps * max(r.abs().max().item(), 1e-3)
        assert max_err(f, r) <= 2 * max_err(o, r) + floor, \
            f"{name}: fused error {max_err(f, r):.3g} vs PyTorch {dtype} error {max_err(o, r):.3g}"


# ---------------------------------------------------------------------------- values and gradients
# A covering subset of N in 2..5 x P in {16, 49, 64} x D in {8, 64, 128} x odd batches.
FP32_CASES = [  # (n, b, p, d)
    (2, 3, 49, 64),
    (3, 1, 16, 8),
    (4, 3, 64, 128),
    (5, 3, 49, 8),
    (2, 1, 64, 8),
    (3, 3, 16, 128),
    (5, 1, 64, 64),
    (4, 1, 49, 128),
]


@pytest.mark.parametrize("n,b,p,d", FP32_CASES)
def test_fp32_values_and_gradients_match_reference(n, b, p, d):
    check_fp32(n, b, p, d)


@pytest.mark.parametrize("n,b,p,d,blocks", [(3, 3, 49, 64, (16, 16)), (2, 3, 49, 8, (16, 32)),
                                            (5, 1, 64, 128, (32, 16))])
def test_several_query_and_key_blocks_with_ragged_last_block(n, b, p, d, blocks):
    """P = 49 over 16-wide blocks: the online softmax runs over 4 key blocks, the last one 1 wide."""
    with _launch.attention_blocks(*blocks):
        check_fp32(n, b, p, d)


def test_custom_scale():
    check_fp32(3, 1, 16, 8, scale=0.7)


@pytest.mark.parametrize("n,b,p,d", [(2, 3, 49, 64), (3, 1, 64, 8), (5, 3, 16, 128), (4, 1, 49, 8)])
def test_fp16_within_twice_pytorch_fp16_error(n, b, p, d):
    check_lowp(n, b, p, d, torch.float16)


def test_one_slot_attends_to_nothing_and_averages_values():
    """N = 1: no other slot, all logits 0, m = mean of v; gradients still match."""
    check_fp32(1, 2, 16, 8)


def test_strided_inputs_and_expanded_upstream_gradient():
    n, b, p, d = 3, 3, 16, 8
    q, k, v = make_inputs(n, b, p, d)
    qt = q.transpose(2, 3).contiguous().transpose(2, 3)        # [N,B,P,D] with D-stride P
    kt = k.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    vt = v.transpose(0, 1).contiguous().transpose(0, 1)
    assert not qt.is_contiguous() and not kt.is_contiguous() and not vt.is_contiguous()
    lq, lk, lv = leaves(qt, kt, vt)
    cross_attention_mask(lq, lk, lv).sum().backward()          # upstream gradient: expanded ones
    rq, rk, rv = leaves(q, k, v)
    cross_attention_mask_reference(rq, rk, rv).sum().backward()
    for a, r in [(lq, rq), (lk, rk), (lv, rv)]:
        torch.testing.assert_close(a.grad, r.grad, **FP32_TOL["cpu"])


@pytest.mark.parametrize("wanted", ["q", "k", "v", "kv"])
def test_only_requested_gradients_are_computed(wanted):
    q, k, v = make_inputs(3, 1, 16, 8)
    lq, lk, lv = (t.detach().clone().requires_grad_(name in wanted) for name, t in zip("qkv", (q, k, v)))
    cross_attention_mask(lq, lk, lv).sum().backward()
    rq, rk, rv = leaves(q, k, v)
    cross_attention_mask_reference(rq, rk, rv).sum().backward()
    for name, a, r in zip("qkv", (lq, lk, lv), (rq, rk, rv)):
        if name in wanted:
            torch.testing.assert_close(a.grad, r.grad, **FP32_TOL["cpu"])
        else:
            assert a.grad is None


def test_no_gradient_graph_under_no_grad():
    q, k, v = leaves(*make_inputs(2, 1, 16, 8))
    with torch.no_grad():
        out = cross_attention_mask(q, k, v)
    assert not out.requires_grad
    torch.testing.assert_close(out, cross_attention_mask_reference(q.detach(), k.detach(), v.detach()),
                               **FP32_TOL["cpu"])


# ---------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("n", [2, 3])
def test_backward_kernels_match_float64_finite_differences(n):
    """Directional derivatives of the float64 reference math (central differences, exact to
    ~1e-9) against the kernels' fp32 gradients."""
    b, p, d = 2, 5, 3
    q, k, v = make_inputs(n, b, p, d, seed=7)
    w = torch.randn(n, b, p, generator=torch.Generator().manual_seed(8)).double()
    _, grads = fused(q, k, v, w.float())

    def f64(q_, k_, v_):
        k_others = k_.sum(0, keepdim=True) - k_
        attn = (torch.matmul(q_, k_others.transpose(-1, -2)) * d ** -0.5).softmax(-1)
        return float((torch.matmul(attn, v_.unsqueeze(-1)).squeeze(-1) * w).sum())

    base = [t.double() for t in (q, k, v)]
    g = torch.Generator().manual_seed(9)
    eps = 1e-5
    for idx, grad in enumerate(grads):
        u = torch.randn(base[idx].shape, generator=g, dtype=torch.float64)
        plus = [t + eps * u if j == idx else t for j, t in enumerate(base)]
        minus = [t - eps * u if j == idx else t for j, t in enumerate(base)]
        numeric = (f64(*plus) - f64(*minus)) / (2 * eps)
        analytic = float((grad.double() * u).sum())
        assert abs(numeric - analytic) <= 1e-4 * max(1.0, abs(numeric)), ("qkv"[idx], numeric, analytic)


def test_kernel_forward_and_backward_agree_by_finite_differences():
    """gradcheck-style on the kernels alone, fp32: central differences of the fused forward
    along a random direction against the fused backward."""
    n, b, p, d = 3, 1, 6, 4
    q, k, v = make_inputs(n, b, p, d, seed=11)
    w = torch.randn(n, b, p, generator=torch.Generator().manual_seed(12))
    _, grads = fused(q, k, v, w)
    g = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for idx, grad in enumerate(grads):
            base = [q, k, v]
            u = torch.randn(base[idx].shape, generator=g)
            eps = 1e-2
            f = lambda s: float((cross_attention_mask(*[t + s * eps * u if j == idx else t
                                                        for j, t in enumerate(base)]).double() * w).sum())
            numeric = (f(1) - f(-1)) / (2 * eps)
            analytic = float((grad * u).sum())
            assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(numeric)), (idx, numeric, analytic)


# ---------------------------------------------------------------------------- determinism, compile
def run_twice_bitwise(device, n, b, p, d, dtype=torch.float32):
    q, k, v = (t.to(dtype) for t in make_inputs(n, b, p, d, device=device))
    dout = torch.randn(n, b, p, generator=torch.Generator().manual_seed(5)).to(device)
    first = fused(q, k, v, dout)
    second = fused(q, k, v, dout)
    assert torch.equal(first[0], second[0])
    for a, c in zip(first[1], second[1]):
        assert torch.equal(a, c)


@pytest.mark.parametrize("n", [2, 3])
def test_backward_is_deterministic(n):
    run_twice_bitwise(CPU, n, 3, 49, 8)


def test_compiles_with_fullgraph_and_matches_eager():
    """Interpreted Triton lives in an opaque custom op (docs/compile.md, fact 4): torch.compile
    traces the public function, the fake and the autograd formula without a graph break."""
    q, k, v = make_inputs(3, 1, 16, 8)
    dout = torch.randn(3, 1, 16)

    def step(q_, k_, v_):
        return cross_attention_mask(q_, k_, v_) * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    lq, lk, lv = leaves(q, k, v)
    out = compiled(lq, lk, lv)
    grads = torch.autograd.grad(out, (lq, lk, lv), dout)
    e_out, e_grads = fused(q, k, v, 2.0 * dout)
    torch.testing.assert_close(out, 2.0 * e_out)
    for a, c in zip(grads, e_grads):
        torch.testing.assert_close(a, c)


def test_opcheck_forward_op():
    q, k, v = leaves(*make_inputs(2, 1, 16, 8))
    torch.library.opcheck(cam.cross_attention_mask_forward, (q, k, v, 0.5),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_kernels_build_for_sm90_without_a_gpu():
    build_for_sm90("attention")


# ---------------------------------------------------------------------------- bad input
@pytest.fixture
def no_launch(monkeypatch):
    replace_kernels_with_tripwires(monkeypatch, cam, "_cross_attention_mask_", 5)


@pytest.mark.parametrize("case,error,match", [
    ("q_3d", ValueError, "q must be 4-D"),
    ("k_shape", ValueError, "same shape"),
    ("v_shape", ValueError, "v must have shape"),
    ("int_q", TypeError, "float32, float16 or bfloat16"),
    ("dtype_mismatch", TypeError, "same dtype"),
    ("head_dim", ValueError, "head dims"),
    ("device", ValueError, "one device"),
    ("scale_tensor", TypeError, "scale"),
    ("not_tensor", TypeError, "torch.Tensor"),
])
def test_bad_input_raises_one_line_error_before_any_launch(no_launch, case, error, match):
    q, k, v = make_inputs(2, 1, 4, 8)
    kwargs = {}
    if case == "q_3d":
        q = q[0]
    elif case == "k_shape":
        k = k[:, :, :3]
    elif case == "v_shape":
        v = v[..., :3]
    elif case == "int_q":
        q = q.long()
    elif case == "dtype_mismatch":
        k = k.half()
    elif case == "head_dim":
        q, k, _ = make_inputs(2, 1, 4, 513)
    elif case == "device":
        v = v.to("meta")
    elif case == "scale_tensor":
        kwargs["scale"] = torch.tensor(0.5)
    elif case == "not_tensor":
        q = q.tolist()
    with pytest.raises(error, match=match) as info:
        cross_attention_mask(q, k, v, **kwargs)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- GPU
CUDA = torch.device("cuda")


# GPU sizes: ResNet-50 (N=2, P=196, D=512) and CIFAR ResNet-18 (N=3, P=64, D=128). Few cases,
# because every (dtype, D, N==2) combination compiles its own kernels and `make gpu-check` gives
# all GPU tests 180 s.
@gpu
@pytest.mark.parametrize("n,b,p,d", [(2, 3, 196, 512), (3, 5, 64, 128)])
def test_gpu_fp32_values_and_gradients(n, b, p, d):
    check_fp32(n, b, p, d, device=CUDA)


@gpu
@pytest.mark.parametrize("n,b,p,d,dtype", [(2, 4, 196, 512, torch.bfloat16), (3, 5, 64, 128, torch.bfloat16),
                                           (3, 5, 64, 128, torch.float16)])
def test_gpu_half_precision_within_twice_pytorch_error(n, b, p, d, dtype):
    check_lowp(n, b, p, d, dtype, device=CUDA)


@gpu
@pytest.mark.parametrize("n,p,d,dtype", [(2, 196, 512, torch.bfloat16), (3, 64, 128, torch.float32)])
def test_gpu_backward_is_deterministic(n, p, d, dtype):
    run_twice_bitwise(CUDA, n, 8, p, d, dtype)


@gpu
def test_gpu_inductor_compile_fullgraph():
    q, k, v = (t.bfloat16() for t in make_inputs(2, 4, 196, 512, device=CUDA))
    dout = torch.randn(2, 4, 196, device="cuda")
    compiled = torch.compile(lambda a, b_, c: cross_attention_mask(a, b_, c) + 1.0, fullgraph=True)
    lq, lk, lv = leaves(q, k, v)
    out = compiled(lq, lk, lv)
    grads = torch.autograd.grad(out, (lq, lk, lv), dout)
    e_out, e_grads = fused(q, k, v, dout)
    torch.testing.assert_close(out, e_out + 1.0)
    for a, c in zip(grads, e_grads):
        torch.testing.assert_close(a, c)
