// SplitNet's group weight regulariser on CUDA, fused: ONE pass over W computes both GEMMs
// a = (Q∘Q) M and b = (P∘P) M^T (M = mean over the kernel of W^2) for all G groups, and ONE
// pass computes dW and the reductions behind dP and dQ. Each CTA owns a kTile x kTile block
// of (D_out, D_in): it forms M for the block in shared memory, reduces it against the G rows
// of Q∘Q / P∘P (or of the incoming gradients) and adds its partial sums with atomics. fp32
// accumulation; fp32/fp16/bf16 weights (fp64 runs the ATen composition, for gradcheck).
#include <c10/cuda/CUDAException.h>
#include <ATen/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <tuple>

#include "../ops.h"
#include "dtype.cuh"

namespace splitkern {
namespace {

constexpr int kTile = 32, kThreads = 256;

using gemm::CudaType;
using gemm::from_float;
using gemm::to_float;

struct Shape {
  int64_t d_out, d_in, taps, groups;
};

// The kernels' per-thread phases (between barriers), shared with the host emulation below.

SPLITKERN_HD void accumulate(float* target, float v) {
#ifdef __CUDA_ARCH__
  atomicAdd(target, v);
#else
  *target += v;
#endif
}

// M for this CTA's block into m_tile (zero outside W).
template <typename T>
SPLITKERN_HD void energy_tile(int tid, const T* w, const Shape s, int64_t o0, int64_t i0,
                              float (*m_tile)[kTile + 1]) {
  for (int e = tid; e < kTile * kTile; e += kThreads) {
    const int r = e / kTile, c = e % kTile;
    const int64_t o = o0 + r, i = i0 + c;
    float sum = 0.0f;
    if (o < s.d_out && i < s.d_in) {
      const T* cell = w + (o * s.d_in + i) * s.taps;
      for (int64_t t = 0; t < s.taps; ++t) {
        const float v = to_float(cell[t]);
        sum += v * v;
      }
    }
    m_tile[r][c] = sum / static_cast<float>(s.taps);
  }
}

// cols[g, i] += sum_o left[g, o] M[o, i] and rows[g, o] += sum_i right[g, i] M[o, i] over the block.
SPLITKERN_HD void reduce_tile(int tid, const float (*m_tile)[kTile + 1], const Shape s, int64_t o0, int64_t i0,
                              const float* left, const float* right, float* cols, float* rows) {
  for (int64_t e = tid; e < s.groups * kTile; e += kThreads) {
    const int64_t g = e / kTile;
    const int c = static_cast<int>(e % kTile);
    if (i0 + c < s.d_in) {
      float sum = 0.0f;
      for (int r = 0; r < kTile && o0 + r < s.d_out; ++r) sum += left[g * s.d_out + o0 + r] * m_tile[r][c];
      accumulate(&cols[g * s.d_in + i0 + c], sum);
    }
    if (o0 + c < s.d_out) {
      float sum = 0.0f;
      for (int k = 0; k < kTile && i0 + k < s.d_in; ++k) sum += right[g * s.d_in + i0 + k] * m_tile[c][k];
      accumulate(&rows[g * s.d_out + o0 + c], sum);
    }
  }
}

// dW = 2/taps * W * dL/dM over the block, dL/dM = (Q∘Q)^T dL/da + (dL/db)^T (P∘P).
template <typename T>
SPLITKERN_HD void weight_grad_tile(int tid, const T* w, const float* p2, const float* q2, const float* grad_a,
                                   const float* grad_b, T* grad_w, const Shape s, int64_t o0, int64_t i0) {
  for (int e = tid; e < kTile * kTile; e += kThreads) {
    const int64_t o = o0 + e / kTile, i = i0 + e % kTile;
    if (o >= s.d_out || i >= s.d_in) continue;
    float grad_m = 0.0f;
    for (int64_t g = 0; g < s.groups; ++g)
      grad_m += q2[g * s.d_out + o] * grad_a[g * s.d_in + i] + grad_b[g * s.d_out + o] * p2[g * s.d_in + i];
    const float scale = 2.0f * grad_m / static_cast<float>(s.taps);
    const int64_t base = (o * s.d_in + i) * s.taps;
    for (int64_t t = 0; t < s.taps; ++t) grad_w[base + t] = from_float<T>(scale * to_float(w[base + t]));
  }
}

template <typename T>
struct ForwardArgs {
  const T* w;
  const float *p2, *q2;
  float *a, *b;
  Shape s;
};

template <typename T>
struct BackwardArgs {
  const T* w;
  const float *p2, *q2, *grad_a, *grad_b;
  T* grad_w;
  float *sum_p, *sum_q;
  Shape s;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) reg_forward_kernel(const ForwardArgs<T> args) {
  __shared__ float m_tile[kTile][kTile + 1];
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kTile, i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  energy_tile(threadIdx.x, args.w, args.s, o0, i0, m_tile);
  __syncthreads();
  reduce_tile(threadIdx.x, m_tile, args.s, o0, i0, args.q2, args.p2, args.a, args.b);  // a = (Q∘Q) M, b = (P∘P) M^T
}

template <typename T>
__global__ void __launch_bounds__(kThreads) reg_backward_kernel(const BackwardArgs<T> args) {
  __shared__ float m_tile[kTile][kTile + 1];
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kTile, i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  energy_tile(threadIdx.x, args.w, args.s, o0, i0, m_tile);
  weight_grad_tile(threadIdx.x, args.w, args.p2, args.q2, args.grad_a, args.grad_b, args.grad_w, args.s, o0, i0);
  __syncthreads();
  // (dL/db) M and (dL/da) M^T
  reduce_tile(threadIdx.x, m_tile, args.s, o0, i0, args.grad_b, args.grad_a, args.sum_p, args.sum_q);
}

// The kernels run on the host, CTA after CTA and thread after thread between barriers
// (torch.ops.splitkern_emulated, for tests without a GPU): body(o0, i0) per CTA.
template <typename Body>
void for_each_cta(dim3 grid, Body body) {
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) body(static_cast<int64_t>(by) * kTile, static_cast<int64_t>(bx) * kTile);
}

template <typename T>
void emulate_forward(const ForwardArgs<T>& args, dim3 grid) {
  float m_tile[kTile][kTile + 1];
  for_each_cta(grid, [&](int64_t o0, int64_t i0) {
    for (int tid = 0; tid < kThreads; ++tid) energy_tile(tid, args.w, args.s, o0, i0, m_tile);
    for (int tid = 0; tid < kThreads; ++tid) reduce_tile(tid, m_tile, args.s, o0, i0, args.q2, args.p2, args.a, args.b);
  });
}

template <typename T>
void emulate_backward(const BackwardArgs<T>& args, dim3 grid) {
  float m_tile[kTile][kTile + 1];
  for_each_cta(grid, [&](int64_t o0, int64_t i0) {
    for (int tid = 0; tid < kThreads; ++tid) {
      energy_tile(tid, args.w, args.s, o0, i0, m_tile);
      weight_grad_tile(tid, args.w, args.p2, args.q2, args.grad_a, args.grad_b, args.grad_w, args.s, o0, i0);
    }
    for (int tid = 0; tid < kThreads; ++tid)
      reduce_tile(tid, m_tile, args.s, o0, i0, args.grad_b, args.grad_a, args.sum_p, args.sum_q);
  });
}

Shape shape_of(const Tensor& weight, const Tensor& p) {  // after check_reg
  return {weight.size(0), weight.size(1), weight.numel() / std::max<int64_t>(1, weight.size(0) * weight.size(1)),
          p.size(0)};
}

dim3 grid_of(const Shape& s) {
  const auto tiles = [](int64_t size) { return static_cast<unsigned>((size + kTile - 1) / kTile); };
  return dim3(tiles(s.d_in), tiles(s.d_out));
}

// fp32/fp16/bf16 weights (fp64 takes the ATen path before dispatch).
#define SPLITKERN_REG_CASES(...)                    \
  AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)         \
  AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)          \
  AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)

Tensor fp32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

// The kernel entry points (fp32/fp16/bf16 weights; CPU tensors run the host emulation).

std::tuple<Tensor, Tensor> gemms(const Tensor& weight, const Tensor& p, const Tensor& q) {
  const at::OptionalDeviceGuard guard(at::device_of(weight));
  check_reg(weight, p, q);
  const Shape s = shape_of(weight, p);
  const Tensor w = weight.contiguous(), p2 = fp32(p).square(), q2 = fp32(q).square();
  Tensor a = at::zeros({s.groups, s.d_in}, p2.options()), b = at::zeros({s.groups, s.d_out}, p2.options());
  if (w.numel() == 0 || s.groups == 0) return {a, b};
  AT_DISPATCH_SWITCH(w.scalar_type(), "splitkern_reg_cuda", SPLITKERN_REG_CASES([&] {
    using T = typename CudaType<scalar_t>::type;
    const ForwardArgs<T> args{reinterpret_cast<const T*>(w.data_ptr()), p2.data_ptr<float>(), q2.data_ptr<float>(),
                              a.data_ptr<float>(), b.data_ptr<float>(), s};
    if (!w.is_cuda()) return emulate_forward(args, grid_of(s));
    reg_forward_kernel<T><<<grid_of(s), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }));
  return {a, b};
}

std::tuple<Tensor, Tensor, Tensor> gemms_backward(const Tensor& weight, const Tensor& p, const Tensor& q,
                                                  const Tensor& grad_a, const Tensor& grad_b) {
  const at::OptionalDeviceGuard guard(at::device_of(weight));
  check_reg_backward(weight, p, q, grad_a, grad_b);
  const Shape s = shape_of(weight, p);
  const Tensor w = weight.contiguous(), pa = fp32(p), qa = fp32(q), p2 = pa.square(), q2 = qa.square();
  const Tensor da = fp32(grad_a), db = fp32(grad_b);
  Tensor grad_w = at::zeros_like(w), sum_p = at::zeros_like(pa), sum_q = at::zeros_like(qa);
  if (w.numel() > 0 && s.groups > 0) {
    AT_DISPATCH_SWITCH(w.scalar_type(), "splitkern_reg_backward_cuda", SPLITKERN_REG_CASES([&] {
      using T = typename CudaType<scalar_t>::type;
      const BackwardArgs<T> args{reinterpret_cast<const T*>(w.data_ptr()), p2.data_ptr<float>(),
                                 q2.data_ptr<float>(), da.data_ptr<float>(), db.data_ptr<float>(),
                                 reinterpret_cast<T*>(grad_w.data_ptr()), sum_p.data_ptr<float>(),
                                 sum_q.data_ptr<float>(), s};
      if (!w.is_cuda()) return emulate_backward(args, grid_of(s));
      reg_backward_kernel<T><<<grid_of(s), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }));
  }
  return {grad_w, (2 * pa * sum_p).to(p.scalar_type()), (2 * qa * sum_q).to(q.scalar_type())};
}

// fp64 (gradcheck) takes the ATen composition on CUDA; the emulation has no fp64 kernel to run.
bool is_double(const Tensor& weight) { return weight.scalar_type() == at::kDouble; }

std::tuple<Tensor, Tensor> gemms_cuda(const Tensor& weight, const Tensor& p, const Tensor& q) {
  return is_double(weight) ? group_weight_reg_gemms_aten(weight, p, q) : gemms(weight, p, q);
}

std::tuple<Tensor, Tensor, Tensor> gemms_backward_cuda(const Tensor& weight, const Tensor& p, const Tensor& q,
                                                       const Tensor& grad_a, const Tensor& grad_b) {
  return is_double(weight) ? group_weight_reg_gemms_backward_aten(weight, p, q, grad_a, grad_b)
                           : gemms_backward(weight, p, q, grad_a, grad_b);
}

std::tuple<Tensor, Tensor> gemms_emulated(const Tensor& weight, const Tensor& p, const Tensor& q) {
  TORCH_CHECK(!is_double(weight), "splitkern_emulated runs the fp32/fp16/bf16 regulariser kernels only");
  return gemms(weight, p, q);
}

std::tuple<Tensor, Tensor, Tensor> gemms_backward_emulated(const Tensor& weight, const Tensor& p, const Tensor& q,
                                                           const Tensor& grad_a, const Tensor& grad_b) {
  TORCH_CHECK(!is_double(weight), "splitkern_emulated runs the fp32/fp16/bf16 regulariser kernels only");
  return gemms_backward(weight, p, q, grad_a, grad_b);
}

}  // namespace

TORCH_LIBRARY_IMPL(splitkern, CUDA, m) {
  m.impl("ext_group_weight_reg_gemms", &gemms_cuda);
  m.impl("ext_group_weight_reg_gemms_backward", &gemms_backward_cuda);
}

TORCH_LIBRARY_IMPL(splitkern_emulated, CPU, m) {
  m.impl("group_weight_reg_gemms", &gemms_emulated);
  m.impl("group_weight_reg_gemms_backward", &gemms_backward_emulated);
}

const KernelInfo cuda_info(
    "group_weight_reg:cuda",
    "CUDA: fused, one pass over W for both GEMMs and one for the backward (fp32/fp16/bf16; fp64 via ATen)");
const KernelInfo emulated_info("group_weight_reg:emulated", "the CUDA kernels run on the host (splitkern_emulated)");

}  // namespace splitkern
