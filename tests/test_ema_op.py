"""The fused EMA op ``torch.ops.adautomix_fast.ema_update_`` (csrc/) and its PyTorch twin.

ema <- m * ema + (1 - m) * model over many tensors in place (docs/algorithm.md, EMA teacher). Checked
against the formula in float64, against the ``torch._foreach_lerp_`` twin, with ``opcheck``,
inside ``torch.compile(fullgraph=True)``, for every bad input, and without the extension. The
``gpu`` tests add the CUDA kernel: values, no host sync, and a captured CUDA graph replayed with
new momentum values.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import adautomix_fast.step.ema as E
from adautomix_fast.step.ema import ema_update_, ema_update_reference, momentum_tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_OP = E.extension_info()["cpu"]
HAS_CUDA_OP = E.extension_info()["cuda"]
needs_op = pytest.mark.skipif(not HAS_OP, reason=f"adautomix_fast._C not available: {E.extension_info()['error']}")

MODEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# 0 and 1; around the CUDA vector width (4) and the CPU/CUDA chunk sizes (32768 / 16384);
# above 65,536; multi-dimensional parameter shapes, one channels-last conv weight.
SIZES = [0, 1, 3, 4, 5, 7, 8, 33, 1000, 16383, 16385, 32767, 32769, 65537, 70_001]
SHAPES = [(s,) for s in SIZES] + [(0, 3), (64, 3, 7, 7), (2048, 33), (256, 1, 1, 1), (5, 6, 3, 3)]


def _op(ema, model, momentum):
    torch.ops.adautomix_fast.ema_update_(ema, model, momentum)


def _fallback(ema, model, momentum):
    ema_update_reference(ema, model, momentum)


IMPLS = {"op": _op, "fallback": _fallback, "wrapper": ema_update_}


def _impl(name):
    if name == "op" and not HAS_OP:
        pytest.skip("adautomix_fast._C not built")
    return IMPLS[name]


def make_pairs(dtype, device="cpu", seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    ema, model = [], []
    for i, shape in enumerate(shapes):
        e = torch.randn(shape, generator=g)
        x = torch.randn(shape, generator=g)
        if len(shape) == 4 and shape[0] == 5:  # one channels-last pair, as a channels-last model has
            e = e.contiguous(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        ema.append(e.to(device))
        model.append(x.to(device=device, dtype=dtype))
    return ema, model


def expected_f64(ema, model, m):
    """The formula in float64 on the values as stored (m as the float64 the op reads)."""
    m64 = torch.tensor(m, dtype=torch.float64)
    return [m64 * e.double() + (1 - m64) * x.double() for e, x in zip(ema, model)]


def assert_matches(got, want, atol=1e-6, rtol=1e-6):
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == torch.float32 and g.shape == w.shape, i
        torch.testing.assert_close(g.double().cpu(), w.cpu(), atol=atol, rtol=rtol, msg=lambda s: f"tensor {i}: {s}")


# ---------------------------------------------------------------------------- registration
@needs_op
def test_schema_and_kernels():
    schema = str(torch.ops.adautomix_fast.ema_update_.default._schema)
    assert schema == "adautomix_fast::ema_update_(Tensor(a!)[] ema, Tensor[] model, Tensor momentum) -> ()"
    assert E.extension_info()["loaded"] and E.extension_info()["error"] is None


@needs_op
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_opcheck(dtype):
    ema, model = make_pairs(dtype, shapes=[(0,), (1,), (7,), (70_001,), (5, 6, 3, 3)])
    torch.library.opcheck(torch.ops.adautomix_fast.ema_update_.default, (ema, model, momentum_tensor(0.9, "cpu")))


# ---------------------------------------------------------------------------- values
@pytest.mark.parametrize("impl", ["op", "fallback", "wrapper"])
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
@pytest.mark.parametrize("m", [0.3, 0.999, 0.999999])
def test_values_match_float64_formula(impl, dtype, m):
    fn = _impl(impl)
    ema, model = make_pairs(dtype)
    want = expected_f64(ema, model, m)
    fn(ema, model, momentum_tensor(m, "cpu"))
    assert_matches(ema, want)
    assert ema[-1].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl", ["op", "fallback", "wrapper"])
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_momentum_one_keeps_and_zero_copies_exactly(impl, dtype):
    fn = _impl(impl)
    ema, model = make_pairs(dtype)
    before = [e.clone() for e in ema]
    fn(ema, model, momentum_tensor(1.0, "cpu"))
    for e, b in zip(ema, before):
        assert torch.equal(e, b)
    fn(ema, model, momentum_tensor(0.0, "cpu"))
    for e, x in zip(ema, model):
        assert torch.equal(e, x.float())


# The released code weights the student by the Python float 1 - m (formed in double);
# formed in fp32 from fp32(m) the weight is 1.3% too large at m = 0.999999. With the EMA at 0, the
# update *is* the student's weight times the model value, so the test sees the weight itself.
STUDENT_WEIGHT_MOMENTA = [0.999, 0.9999, 0.99999, 0.999999]


def assert_student_weight_formed_in_double(update, m, device="cpu"):
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(4096, generator=g) + 0.5).to(device)          # model values in [0.5, 1.5)
    ema = [torch.zeros(4096, device=device)]
    update(ema, [x], momentum_tensor(m, device))
    want = x.double() * (1.0 - m)                                 # 1 - m formed in double (Python float)
    # fp32 rounding: the weight and the product are each rounded once (<= 2 ulps of the result).
    torch.testing.assert_close(ema[0].double(), want, rtol=2.5e-7, atol=0)
    # The fp32-formed weight 1 - fp32(m) is off by 0.0013% (m = 0.999) .. 1.3% (m = 0.999999): at
    # least 4x outside that tolerance, so the check above tells the two apart for every m here.
    fp32_weight = 1.0 - float(torch.tensor(m, dtype=torch.float32))
    assert abs(fp32_weight / (1.0 - m) - 1) > 4 * 2.5e-7


@pytest.mark.parametrize("impl", ["op", "fallback", "wrapper"])
@pytest.mark.parametrize("m", STUDENT_WEIGHT_MOMENTA)
def test_student_weight_is_one_minus_m_formed_in_double(impl, m):
    assert_student_weight_formed_in_double(_impl(impl), m)


@needs_op
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_op_and_fallback_agree(dtype):
    ema, model = make_pairs(dtype, seed=3)
    twin = [e.clone() for e in ema]
    for m in (0.9, 0.5, 0.1):  # both sides of lerp's |w| < 0.5 switch
        _op(ema, model, momentum_tensor(m, "cpu"))
        _fallback(twin, model, momentum_tensor(m, "cpu"))
        for a, b in zip(ema, twin):  # one or two fp32 ulps apart (FMA or not)
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@needs_op
def test_wrapper_runs_the_op_without_warning():
    ema, model = make_pairs(torch.float32, shapes=[(3,), (70_001,)])
    with torch.autograd.profiler.profile() as prof, warnings.catch_warnings():
        warnings.simplefilter("error")
        ema_update_(ema, model, momentum_tensor(0.5, "cpu"))
    names = {evt.name for evt in prof.function_events}
    assert "adautomix_fast::ema_update_" in names and not any("lerp" in n for n in names), names


def test_empty_lists_are_a_no_op():
    for fn in (ema_update_, ema_update_reference):
        fn([], [], momentum_tensor(0.5, "cpu"))


@needs_op
def test_op_bumps_version_counters():
    ema, model = make_pairs(torch.float32, shapes=[(3,), (4, 5)])
    versions = [e._version for e in ema]
    _op(ema, model, momentum_tensor(0.5, "cpu"))
    assert [e._version for e in ema] == [v + 1 for v in versions]


def test_teacher_pairs_update_follows_the_student():
    student, teacher = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(3, 8, 3)
    student, teacher = (mod.to(memory_format=torch.channels_last) for mod in (student, teacher))
    ema, model = E.teacher_pairs(teacher, student)
    want = expected_f64(ema, model, 0.75)
    ema_update_(ema, model, momentum_tensor(0.75, "cpu"))
    assert_matches([p.detach() for p in teacher.parameters()], want)


# ---------------------------------------------------------------------------- torch.compile
def _compiled_updates():
    def step(ema, model, momentum):
        ema_update_(ema, model, momentum)

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    ema, model = make_pairs(torch.float32, shapes=[(1,), (7,), (70_001,), (5, 6, 3, 3)])
    twin = [e.clone() for e in ema]
    for m in (0.9, 0.25):  # a new momentum value must not be baked into the graph
        compiled(ema, model, momentum_tensor(m, "cpu"))
        ema_update_reference(twin, model, momentum_tensor(m, "cpu"))
        for a, b in zip(ema, twin):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@needs_op
def test_op_inside_torch_compile_fullgraph():
    torch._dynamo.reset()
    _compiled_updates()


def test_fallback_inside_torch_compile_fullgraph(monkeypatch):
    monkeypatch.setattr(E, "_OP_DEVICES", {})
    monkeypatch.setattr(E, "_WARNED", set())
    torch._dynamo.reset()
    _compiled_updates()
    torch._dynamo.reset()  # the graph above was built on the patched module state


# ---------------------------------------------------------------------------- bad input
def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(shape, dtype=dtype, device=device)


M = lambda: momentum_tensor(0.5, "cpu")

BAD = {
    "lengths differ": (lambda: ([_t(2), _t(2)], [_t(2)], M()), ValueError, r"2 EMA tensors but 1 model tensors"),
    "shapes differ": (lambda: ([_t(2), _t(2, 3)], [_t(2), _t(3, 2)], M()), ValueError,
                      r"ema\[1\] has shape \[2, 3\] but model\[1\] has shape \[3, 2\]"),
    "ema fp16": (lambda: ([_t(2), _t(2, dtype=torch.float16)], [_t(2), _t(2)], M()), TypeError,
                 r"ema\[1\] must be float32 \(the EMA state stays fp32\), got float16"),
    "ema fp64": (lambda: ([_t(2, dtype=torch.float64)], [_t(2)], M()), TypeError, r"ema\[0\] must be float32"),
    "model fp64": (lambda: ([_t(2)], [_t(2, dtype=torch.float64)], M()), TypeError,
                   r"model\[0\] must be float32, float16 or bfloat16, got float64"),
    "model int": (lambda: ([_t(2)], [_t(2, dtype=torch.int64)], M()), TypeError, r"got int64"),
    "model on another device": (lambda: ([_t(2), _t(2)], [_t(2), _t(2, device="meta")], M()), ValueError,
                                r"model\[1\] is on meta but ema\[0\] is on cpu"),
    "ema on another device": (lambda: ([_t(2), _t(2, device="meta")], [_t(2), _t(2)], M()), ValueError,
                              r"ema\[1\] is on meta but ema\[0\] is on cpu"),
    "momentum on another device": (lambda: ([_t(2)], [_t(2)], momentum_tensor(0.5, "meta")), ValueError,
                                   r"momentum is on meta but ema\[0\] is on cpu"),
    "ema not contiguous": (lambda: ([_t(2), _t(3, 4).t()], [_t(2), _t(4, 3)], M()), ValueError,
                           r"ema\[1\] is not contiguous \(strides \[1, 4\]\)"),
    "model not contiguous": (lambda: ([_t(3)], [_t(6)[::2]], M()), ValueError,
                             r"model\[0\] is not contiguous \(strides \[2\]\)"),
    "memory formats differ": (lambda: ([_t(2, 3, 4, 5)], [_t(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)],
                                       M()), ValueError, r"ema\[0\] has strides .* \(different memory formats\)"),
    "momentum not 0-dim": (lambda: ([_t(2)], [_t(2)], torch.tensor([0.5])), ValueError,
                           r"momentum must be a 0-dim float64 tensor, got shape \[1\]"),
    "momentum fp32": (lambda: ([_t(2)], [_t(2)], torch.tensor(0.5, dtype=torch.float32)), TypeError,
                      r"momentum must be a 0-dim float64 tensor \(1 - m is formed in double\), got dtype float32 "
                      r"\(use adautomix_fast.step.ema.momentum_tensor\)"),
    "momentum fp16": (lambda: ([_t(2)], [_t(2)], torch.tensor(0.5, dtype=torch.float16)), TypeError,
                      r"got dtype float16"),
}


@pytest.mark.parametrize("impl", ["op", "fallback", "wrapper"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_one_line_error_before_any_update(impl, case):
    fn = _impl(impl)
    build, exc_type, pattern = BAD[case]
    ema, model, momentum = build()
    before = [e.clone() for e in ema if e.device.type != "meta"]
    with pytest.raises(exc_type, match=pattern) as info:
        fn(ema, model, momentum)
    assert str(info.value).startswith("ema_update_: ")
    assert "\n" not in str(info.value)
    for e, b in zip([e for e in ema if e.device.type != "meta"], before):
        assert torch.equal(e, b)  # pair 0 is valid: nothing was written before the check failed


@needs_op
@pytest.mark.parametrize("case", list(BAD))
def test_op_and_fallback_give_the_same_message(case):
    build = BAD[case][0]
    messages = []
    for fn in (_op, _fallback):
        with pytest.raises(Exception) as info:
            fn(*build())
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("fn", [ema_update_, ema_update_reference])
def test_momentum_as_a_python_float_is_refused(fn):
    with pytest.raises(TypeError, match="momentum must be a 0-dim float64 tensor, got float"):
        fn([_t(2)], [_t(2)], 0.5)


# ---------------------------------------------------------------------------- without _C
def test_fallback_warns_once_and_says_why(monkeypatch):
    monkeypatch.setattr(E, "_OP_DEVICES", {})
    monkeypatch.setattr(E, "_WARNED", set())
    ema, model = make_pairs(torch.bfloat16, shapes=[(3,), (70_001,)])
    want = expected_f64(ema, model, 0.9)
    with pytest.warns(RuntimeWarning, match=r"pure PyTorch EMA update .* on cpu because") as record:
        ema_update_(ema, model, momentum_tensor(0.9, "cpu"))
        ema_update_(ema, model, momentum_tensor(1.0, "cpu"))
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert_matches(ema, want)


def test_loader_reports_why_the_extension_is_missing(monkeypatch):
    def not_built(name):
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)

    def broken(name):
        raise ImportError("/x/_C.abi3.so: undefined symbol: _ZN3c104impl\nmore text")

    monkeypatch.delenv("ADAUTOMIX_NO_EXT", raising=False)
    monkeypatch.setattr(E.importlib, "import_module", not_built)
    loaded, why = E._load_extension()
    assert not loaded and "is not built" in why and "pip install --no-build-isolation -e ." in why
    monkeypatch.setattr(E.importlib, "import_module", broken)
    loaded, why = E._load_extension()
    assert not loaded and "undefined symbol" in why and "\n" not in why
    monkeypatch.setenv("ADAUTOMIX_NO_EXT", "1")
    assert E._load_extension() == (False, "ADAUTOMIX_NO_EXT=1 is set")


def test_package_runs_without_the_extension():
    """A fresh process with ADAUTOMIX_NO_EXT=1: the package imports and the twin runs, warning once."""
    code = textwrap.dedent("""
        import warnings
        import torch
        import adautomix_fast
        from adautomix_fast.step.ema import ema_update_, extension_info, momentum_tensor
        assert not extension_info()["loaded"], extension_info()
        assert "adautomix_fast._C" not in __import__("sys").modules
        ema, model = [torch.zeros(5)], [torch.ones(5, dtype=torch.float16)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ema_update_(ema, model, momentum_tensor(0.75, "cpu"))
            ema_update_(ema, model, momentum_tensor(1.0, "cpu"))
        assert len(caught) == 1 and "ADAUTOMIX_NO_EXT=1 is set" in str(caught[0].message), caught
        assert torch.equal(ema[0], torch.full((5,), 0.25)), ema
        print("ok")
    """)
    env = {**os.environ, "ADAUTOMIX_NO_EXT": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


# ---------------------------------------------------------------------------- CUDA
needs_cuda_op = pytest.mark.skipif(not HAS_CUDA_OP, reason=E.extension_info()["error"]
                                   or "adautomix_fast._C built without its CUDA part")


def _cuda_pairs(dtype, seed=0):
    """Mixed sizes, more tensors than one launch packs (96), and misaligned views."""
    shapes = SHAPES + [(s,) for s in range(1, 120)] + [(2048, 1000)]
    ema, model = make_pairs(dtype, "cuda", seed, shapes)
    # Views starting one element into a buffer: 4 (fp32) or 2 (fp16/bf16) bytes off the 16-byte
    # alignment, so the kernel takes its scalar path.
    for n in (5, 4099, 70_001):
        ebuf = torch.randn(n + 1, device="cuda")
        xbuf = torch.randn(n + 1, device="cuda").to(dtype)
        ema.append(ebuf[1:])
        model.append(xbuf[1:])
    return ema, model


@pytest.mark.gpu
@needs_cuda_op
@pytest.mark.parametrize("m", STUDENT_WEIGHT_MOMENTA)
def test_cuda_student_weight_is_one_minus_m_formed_in_double(m):
    assert_student_weight_formed_in_double(ema_update_, m, "cuda")
    assert_student_weight_formed_in_double(ema_update_reference, m, "cuda")


@pytest.mark.gpu
@needs_cuda_op
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
@pytest.mark.parametrize("m", [0.3, 0.999999])
def test_cuda_values_match_float64_formula(dtype, m):
    ema, model = _cuda_pairs(dtype)
    want = expected_f64(ema, model, m)
    twin = [e.clone() for e in ema]
    ema_update_(ema, model, momentum_tensor(m, "cuda"))
    assert_matches(ema, want)
    ema_update_reference(twin, model, momentum_tensor(m, "cuda"))
    for a, b in zip(ema, twin):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
@needs_cuda_op
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_cuda_momentum_one_keeps_and_zero_copies_exactly(dtype):
    ema, model = _cuda_pairs(dtype, seed=1)
    before = [e.clone() for e in ema]
    _op(ema, model, momentum_tensor(1.0, "cuda"))
    assert all(torch.equal(e, b) for e, b in zip(ema, before))
    _op(ema, model, momentum_tensor(0.0, "cuda"))
    assert all(torch.equal(e, x.float()) for e, x in zip(ema, model))


@pytest.mark.gpu
@needs_cuda_op
def test_cuda_opcheck():
    ema, model = make_pairs(torch.bfloat16, "cuda", shapes=[(0,), (7,), (70_001,), (5, 6, 3, 3)])
    torch.library.opcheck(torch.ops.adautomix_fast.ema_update_.default, (ema, model, momentum_tensor(0.9, "cuda")))


@pytest.mark.gpu
@needs_cuda_op
def test_cuda_op_never_synchronises():
    ema, model = _cuda_pairs(torch.float32)
    momentum = momentum_tensor(0.9, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ema_update_(ema, model, momentum)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def _capture(fn):
    """Warm up on a side stream, then capture ``fn`` into a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["op", "fallback"])
def test_cuda_graph_replays_read_the_new_momentum(impl):
    if impl == "op" and not HAS_CUDA_OP:
        pytest.skip(E.extension_info()["error"] or "adautomix_fast._C built without its CUDA part")
    fn = IMPLS[impl]
    ema, model = _cuda_pairs(torch.float32, seed=2)
    initial = [e.clone() for e in ema]
    momentum = momentum_tensor(0.5, "cuda")
    graph = _capture(lambda: fn(ema, model, momentum))
    for e, e0 in zip(ema, initial):  # undo the warm-up and the capture-time update (if any)
        e.copy_(e0)
    state = [e.double() for e in initial]
    for m in (0.9, 0.25, 1.0, 0.0):
        momentum.fill_(m)  # in place: the graph reads this address on every replay
        graph.replay()
        state = expected_f64(state, model, m)
        torch.cuda.synchronize()
        assert_matches(ema, state, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(e, x) for e, x in zip(ema, model))  # the last replay (m = 0) copied


@pytest.mark.gpu
@needs_cuda_op
def test_cuda_op_inside_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(ema, model, momentum):
        ema_update_(ema, model, momentum)

    compiled = torch.compile(step, fullgraph=True)
    ema, model = make_pairs(torch.float32, "cuda", shapes=[(7,), (70_001,), (5, 6, 3, 3)])
    twin = [e.clone() for e in ema]
    for m in (0.9, 0.25):
        compiled(ema, model, momentum_tensor(m, "cuda"))
        ema_update_reference(twin, model, momentum_tensor(m, "cuda"))
    for a, b in zip(ema, twin):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
@needs_cuda_op
@pytest.mark.parametrize("where", ["model", "momentum"])
def test_cuda_mixed_devices_are_refused(where):
    ema = [torch.zeros(3, device="cuda")]
    model = [torch.zeros(3, device="cpu" if where == "model" else "cuda")]
    momentum = momentum_tensor(0.5, "cpu" if where == "momentum" else "cuda")
    for fn in (_op, ema_update_, ema_update_reference):
        with pytest.raises(ValueError, match=f"{where}(\\[0\\])? is on cpu but ema\\[0\\] is on cuda"):
            fn(ema, model, momentum)


# ---------------------------------------------------------------------------- benchmark smoke
@pytest.mark.slow
def test_benchmark_cpu_smoke(tmp_path):
    """bench.kernels_ema end to end at one timed call per impl: the results file has every impl."""
    import json

    from bench import kernels_ema

    assert kernels_ema.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    impls = {r["impl"]: r for r in data["kernels"].values()}
    assert set(impls) == {"loop", "foreach", "reference", "op", "wrapper", "copy", "add_"}
    for name in ("loop", "foreach", "reference", "copy", "add_") + (("op", "wrapper") if HAS_OP else ()):
        assert impls[name]["error"] is None and impls[name]["gb_per_s"] > 0, impls[name]
    assert impls["op"]["config"]["parameters"] == 27_606_032  # ResNet-50 + two 2048x1000 heads
