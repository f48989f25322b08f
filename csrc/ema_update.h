// The fused EMA teacher update (docs/algorithm.md, EMA teacher; the op's contract: csrc/README.md):
//
//   adautomix_fast::ema_update_(Tensor(a!)[] ema, Tensor[] model, Tensor momentum) -> ()
//
// in place, for every pair i:  ema[i] <- m * ema[i] + (1 - m) * model[i],  m = momentum
// (a 0-dim float64 tensor on the tensors' device).
//
// Shared by the CPU implementation (ema_update.cpp) and the CUDA one (cuda/ema_update_cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>

namespace adautomix_fast {

// Validates the arguments; throws c10::ValueError / c10::TypeError (Python ValueError /
// TypeError) with one-line messages that match adautomix_fast/step/ema.py::_validate word for word.
// Looks at shapes, dtypes, devices and strides only: no data is read, nothing synchronises.
void check_ema_update_inputs(at::TensorList ema, at::TensorList model, const at::Tensor& momentum);

// The student's weight 1 - m, formed in double and then rounded to fp32, as the released code
// does (it multiplies by the Python float 1 - m). Formed in fp32 from fp32(m) it would be
// 1.0133e-6 instead of 1e-6 at m = 0.999999. The momentum is therefore passed as a float64 tensor.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline float student_weight(double m) { return static_cast<float>(1.0 - m); }

// The update in one formula, as ATen's lerp computes it (so the op and the torch._foreach_lerp_
// twin agree to within an ulp): with w = 1 - m,
//   |w| <  0.5:  e + w * (x - e)         (m = 1 keeps e exactly)
//   |w| >= 0.5:  x - (x - e) * (1 - w)   (m = 0 copies x exactly)
// `near_start` = |w| < 0.5 and `one_minus_w` = 1 - w are computed once per call.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline float ema_lerp(float e, float x, float w, float one_minus_w, bool near_start) {
  const float d = x - e;
  return near_start ? e + w * d : x - d * one_minus_w;
}

}  // namespace adautomix_fast
