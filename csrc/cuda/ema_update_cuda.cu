// adautomix_fast::ema_update_ on CUDA: a multi-tensor apply.
//
// The tensors are grouped by model dtype; each launch carries up to kMaxTensors (EMA pointer,
// model pointer, size) triples by value in its kernel arguments, so one launch updates many
// tensors and needs no device-side metadata buffer (nothing to allocate, copy or keep alive for a
// captured graph). Every tensor is cut into chunks of kChunk elements; the blocks walk the chunks
// of the launch grid-stride, find their tensor by a binary search over the packed prefix sums,
// and update the chunk with 16-byte vector loads where both pointers are aligned (a scalar loop
// for the rest and the tail).
//
// The momentum is read from device memory inside the kernel: no host synchronisation, so the op
// can be captured in a CUDA graph and the schedule can change the value between replays.
// Launched on the current stream of the tensors' device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "../ema_update.h"

namespace adautomix_fast {

namespace {

// Launch shape (not yet tuned on a GPU: no GPU was available when this was written; ATen's
// multi_tensor_apply uses 65536-element chunks with 512 threads). 16384 elements = 4096 vectors
// of 4 = 16 vectors per thread of a 256-thread block; smaller chunks than ATen's balance the
// blocks better across SMs for ResNet-50's mix of large and tiny tensors.
constexpr int kThreads = 256;
constexpr int kVec = 4;  // elements per vector load: 16 bytes of fp32, 8 bytes of fp16/bf16
constexpr int64_t kChunk = 16384;
constexpr int kBlocksPerSm = 8;  // 8 x 256 threads = 2048, a full SM on sm_80 / sm_90
// Tensors per launch: the packed arguments must stay under the 4 KB kernel-parameter limit.
constexpr int kMaxTensors = 96;

struct LaunchArgs {
  float* ema[kMaxTensors];
  const void* model[kMaxTensors];
  int64_t numel[kMaxTensors];
  int64_t chunk_end[kMaxTensors];  // inclusive prefix sum of the tensors' chunk counts
  int count;
};
static_assert(sizeof(LaunchArgs) <= 4000, "kernel arguments must stay under 4 KB");
static_assert(kChunk % kVec == 0, "a chunk must start on a vector boundary");

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T val[N];
};

template <typename scalar_t>
__device__ __forceinline__ void update_chunk(float* __restrict__ e, const scalar_t* __restrict__ x, int64_t n,
                                             float w, float omw, bool near_start) {
  int64_t done = 0;
  const bool aligned = reinterpret_cast<uintptr_t>(e) % sizeof(Pack<float, kVec>) == 0 &&
                       reinterpret_cast<uintptr_t>(x) % sizeof(Pack<scalar_t, kVec>) == 0;
  if (aligned) {
    const int64_t nvec = n / kVec;
    auto* ev = reinterpret_cast<Pack<float, kVec>*>(e);
    const auto* xv = reinterpret_cast<const Pack<scalar_t, kVec>*>(x);
#pragma unroll 4
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      Pack<float, kVec> a = ev[v];
      const Pack<scalar_t, kVec> b = xv[v];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        a.val[k] = ema_lerp(a.val[k], static_cast<float>(b.val[k]), w, omw, near_start);
      }
      ev[v] = a;
    }
    done = nvec * kVec;
  }
  for (int64_t j = done + threadIdx.x; j < n; j += blockDim.x) {
    e[j] = ema_lerp(e[j], static_cast<float>(x[j]), w, omw, near_start);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) ema_update_kernel(const LaunchArgs args, const double* __restrict__ momentum) {
  // One read of the momentum per block, from device memory (a graph replay sees the new value);
  // the student's weight 1 - m is formed in double (student_weight).
  const double m = *momentum;
  const float w = student_weight(m);
  const float omw = static_cast<float>(m);
  const bool near_start = fabsf(w) < 0.5f;
  const int64_t total = args.chunk_end[args.count - 1];
  for (int64_t chunk = blockIdx.x; chunk < total; chunk += gridDim.x) {
    // The tensor of this chunk: the first t with chunk < chunk_end[t] (uniform across the block).
    int lo = 0;
    int hi = args.count - 1;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (chunk < args.chunk_end[mid]) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    const int64_t first_chunk = lo == 0 ? 0 : args.chunk_end[lo - 1];
    const int64_t start = (chunk - first_chunk) * kChunk;
    const int64_t left = args.numel[lo] - start;
    const int64_t n = left < kChunk ? left : kChunk;
    update_chunk<scalar_t>(args.ema[lo] + start, static_cast<const scalar_t*>(args.model[lo]) + start, n, w, omw,
                           near_start);
  }
}

int sm_count(c10::DeviceIndex device) {
  // Cached per device: cudaDeviceGetAttribute is cheap, but this runs every step.
  static std::array<int, 64> cache{};
  if (device < 0 || device >= static_cast<c10::DeviceIndex>(cache.size())) device = 0;
  if (cache[device] == 0) {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cache[device] = std::max(sms, 1);
  }
  return cache[device];
}

template <typename scalar_t>
void launch(const LaunchArgs& args, const double* momentum, int sms, cudaStream_t stream) {
  const int64_t chunks = args.chunk_end[args.count - 1];
  const int64_t grid = std::min<int64_t>(chunks, static_cast<int64_t>(sms) * kBlocksPerSm);
  ema_update_kernel<scalar_t><<<static_cast<unsigned int>(grid), kThreads, 0, stream>>>(args, momentum);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// All tensors whose model dtype is scalar_t, in launches of up to kMaxTensors tensors.
template <typename scalar_t>
void update_group(at::TensorList ema, at::TensorList model, at::ScalarType dtype, const double* momentum, int sms,
                  cudaStream_t stream) {
  LaunchArgs args;
  args.count = 0;
  int64_t chunks = 0;
  for (size_t i = 0; i < ema.size(); ++i) {
    const int64_t n = ema[i].numel();
    if (model[i].scalar_type() != dtype || n == 0) continue;
    chunks += (n + kChunk - 1) / kChunk;
    args.ema[args.count] = ema[i].data_ptr<float>();
    args.model[args.count] = model[i].const_data_ptr();
    args.numel[args.count] = n;
    args.chunk_end[args.count] = chunks;
    if (++args.count == kMaxTensors) {
      launch<scalar_t>(args, momentum, sms, stream);
      args.count = 0;
      chunks = 0;
    }
  }
  if (args.count > 0) launch<scalar_t>(args, momentum, sms, stream);
}

void ema_update_cuda(at::TensorList ema, at::TensorList model, const at::Tensor& momentum) {
  check_ema_update_inputs(ema, model, momentum);
  if (ema.empty()) return;
  // The dispatcher picked CUDA because some argument is on CUDA; the checks made all of them
  // share ema[0]'s device, so this holds unless a non-CUDA device was mixed in (reported above).
  TORCH_CHECK_VALUE(ema[0].is_cuda(), "ema_update_: expected CUDA tensors, got ", ema[0].device());
  const c10::cuda::CUDAGuard guard(ema[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(ema[0].device().index()).stream();
  const int sms = sm_count(ema[0].device().index());
  const double* m = momentum.const_data_ptr<double>();
  update_group<float>(ema, model, at::kFloat, m, sms, stream);
  update_group<c10::Half>(ema, model, at::kHalf, m, sms, stream);
  update_group<c10::BFloat16>(ema, model, at::kBFloat16, m, sms, stream);
}

}  // namespace

TORCH_LIBRARY_IMPL(adautomix_fast, CUDA, m) {
  m.impl("ema_update_", &ema_update_cuda);
}

}  // namespace adautomix_fast
