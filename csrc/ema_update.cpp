// adautomix_fast::ema_update_: the schema, the shared argument checks and the CPU implementation.
// Layout after PyTorch's extension-cpp: one schema in TORCH_LIBRARY, one implementation per
// dispatch key (CPU here, CUDA in cuda/ema_update_cuda.cu), TORCH_CHECK for user errors, the
// fake (meta) implementation in Python (adautomix_fast/step/ema.py), tested with opcheck.
#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ema_update.h"

extern "C" {
// An empty Python module `adautomix_fast._C`: importing it loads this shared library, whose
// static initialisers (TORCH_LIBRARY below) register the op with the dispatcher. Built against
// the limited C API (setup.py passes py_limited_api=True; torch defines Py_LIMITED_API), as
// extension-cpp does.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "adautomix_fast C++/CUDA ops; use torch.ops.adautomix_fast.ema_update_",  // doc
      -1,    // no per-interpreter state
      nullptr,  // no methods: everything is reached through torch.ops
  };
  return PyModule_Create(&module_def);
}
}

namespace adautomix_fast {

namespace {

// Python's spelling (str(torch.float16) without "torch."), so the C++ and Python messages match.
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: return c10::toString(t);
  }
}

// Dense in one of the layouts torch allocates (contiguous, channels-last 2d/3d): the storage
// from data_ptr() holds exactly numel() elements with no gaps, so it can be walked flat.
bool is_dense(const at::Tensor& t) {
  return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast) ||
         t.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

// Two dense tensors of one shape map element (i, j, ...) to the same flat offset when their
// strides agree on every dimension of size > 1 (a size-1 dimension's stride is never used).
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

}  // namespace

void check_ema_update_inputs(at::TensorList ema, at::TensorList model, const at::Tensor& momentum) {
  // Same order and words as adautomix_fast/step/ema.py::_validate (a test holds them together).
  TORCH_CHECK_VALUE(ema.size() == model.size(), "ema_update_: ", ema.size(), " EMA tensors but ",
                    model.size(), " model tensors");
  TORCH_CHECK_VALUE(momentum.dim() == 0, "ema_update_: momentum must be a 0-dim float64 tensor, got shape ",
                    momentum.sizes());
  TORCH_CHECK_TYPE(momentum.scalar_type() == at::kDouble,
                   "ema_update_: momentum must be a 0-dim float64 tensor (1 - m is formed in double), got dtype ",
                   dtype_name(momentum.scalar_type()), " (use adautomix_fast.step.ema.momentum_tensor)");
  if (ema.empty()) return;
  const c10::Device device = ema[0].device();
  TORCH_CHECK_VALUE(momentum.device() == device, "ema_update_: momentum is on ", momentum.device(),
                    " but ema[0] is on ", device, " (keep the momentum on the parameters' device)");
  for (size_t i = 0; i < ema.size(); ++i) {
    const at::Tensor& e = ema[i];
    const at::Tensor& x = model[i];
    TORCH_CHECK_TYPE(e.scalar_type() == at::kFloat, "ema_update_: ema[", i,
                     "] must be float32 (the EMA state stays fp32), got ", dtype_name(e.scalar_type()));
    const at::ScalarType xt = x.scalar_type();
    TORCH_CHECK_TYPE(xt == at::kFloat || xt == at::kHalf || xt == at::kBFloat16, "ema_update_: model[", i,
                     "] must be float32, float16 or bfloat16, got ", dtype_name(xt));
    TORCH_CHECK_VALUE(e.sizes() == x.sizes(), "ema_update_: ema[", i, "] has shape ", e.sizes(),
                      " but model[", i, "] has shape ", x.sizes());
    TORCH_CHECK_VALUE(e.device() == device, "ema_update_: ema[", i, "] is on ", e.device(),
                      " but ema[0] is on ", device);
    TORCH_CHECK_VALUE(x.device() == device, "ema_update_: model[", i, "] is on ", x.device(),
                      " but ema[0] is on ", device);
    TORCH_CHECK_VALUE(is_dense(e), "ema_update_: ema[", i, "] is not contiguous (strides ", e.strides(),
                      "); pass dense tensors such as parameters");
    TORCH_CHECK_VALUE(is_dense(x), "ema_update_: model[", i, "] is not contiguous (strides ", x.strides(),
                      "); pass dense tensors such as parameters");
    TORCH_CHECK_VALUE(same_layout(e, x), "ema_update_: ema[", i, "] has strides ", e.strides(),
                      " but model[", i, "] has strides ", x.strides(), " (different memory formats)");
  }
}

namespace {

// Elements per unit of CPU work: at::parallel_for's own grain size (32768). All tensors are cut
// into such chunks and the chunks shared out in one parallel region, so a model of many small
// tensors still uses every thread and pays for one region, not one per tensor.
constexpr int64_t kCpuChunk = 32768;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

// The inner loop: the branch on w is hoisted out (`kNearStart`), the loop body is branch-free
// and stride-1, so the compiler vectorises it (fp32 directly; fp16/bf16 after the conversion).
template <bool kNearStart, typename scalar_t>
void lerp_range(float* __restrict__ e, const scalar_t* __restrict__ x, int64_t n, float w, float omw) {
  for (int64_t j = 0; j < n; ++j) {
    e[j] = ema_lerp(e[j], static_cast<float>(x[j]), w, omw, kNearStart);
  }
}

void ema_update_cpu(at::TensorList ema, at::TensorList model, const at::Tensor& momentum) {
  check_ema_update_inputs(ema, model, momentum);
  if (ema.empty()) return;
  // On the CPU reading the 0-dim tensor is a plain load, not a device synchronisation.
  const double m = *momentum.const_data_ptr<double>();
  const float w = student_weight(m);
  const float omw = static_cast<float>(m);
  const bool near_start = std::abs(w) < 0.5f;

  std::vector<Chunk> chunks;
  for (size_t i = 0; i < ema.size(); ++i) {
    const int64_t n = ema[i].numel();
    for (int64_t b = 0; b < n; b += kCpuChunk) chunks.push_back({static_cast<int64_t>(i), b, std::min(n, b + kCpuChunk)});
  }
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const Chunk& ch = chunks[c];
      float* e = ema[ch.tensor].data_ptr<float>() + ch.begin;
      const at::Tensor& x = model[ch.tensor];
      const int64_t n = ch.end - ch.begin;
      auto run = [&](const auto* xp) {
        if (near_start) {
          lerp_range<true>(e, xp + ch.begin, n, w, omw);
        } else {
          lerp_range<false>(e, xp + ch.begin, n, w, omw);
        }
      };
      switch (x.scalar_type()) {  // the three model dtypes check_ema_update_inputs admits
        case at::kFloat: run(x.const_data_ptr<float>()); break;
        case at::kHalf: run(x.const_data_ptr<at::Half>()); break;
        case at::kBFloat16: run(x.const_data_ptr<at::BFloat16>()); break;
        default: TORCH_INTERNAL_ASSERT(false, "ema_update_: unchecked model dtype");
      }
    }
  });
}

// ADInplaceOrView: run the CPU/CUDA kernel, then bump the EMA tensors' version counters, as
// PyTorch's own in-place ops (and torch.library.custom_op with mutates_args) do, so autograd's
// saved-tensor checks see the mutation.
void ema_update_ad_inplace_or_view(at::TensorList ema, at::TensorList model, const at::Tensor& momentum) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("adautomix_fast::ema_update_", "")
                             .typed<void(at::TensorList, at::TensorList, const at::Tensor&)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(ema, model, momentum);
  }
  for (const at::Tensor& e : ema) e.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY(adautomix_fast, m) {
  // The fake implementation is registered from Python: torch.library.register_fake in
  // adautomix_fast/step/ema.py, the module named here (torch imports it when it needs the fake).
  m.set_python_module("adautomix_fast.step.ema");
  m.def("ema_update_(Tensor(a!)[] ema, Tensor[] model, Tensor momentum) -> ()");
}

TORCH_LIBRARY_IMPL(adautomix_fast, CPU, m) {
  m.impl("ema_update_", &ema_update_cpu);
}

TORCH_LIBRARY_IMPL(adautomix_fast, ADInplaceOrView, m) {
  m.impl("ema_update_", &ema_update_ad_inplace_or_view);
}

}  // namespace adautomix_fast
