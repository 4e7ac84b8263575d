// block_diag_mm on CUDA: fp16/bf16 forward and grad_input as ONE tensor-core grouped-GEMM
// launch (per 64 groups; grouped_gemm.cuh) with the input gather fused into the A loads and
// the bias + output scatter into the epilogue. fp32/fp64 run the per-group cuBLAS composition
// of csrc/block_diag_mm.cpp (tf32 then follows torch.backends.cuda.matmul.allow_tf32).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "grouped_gemm.cuh"

namespace splitkern {
namespace {

using gemm::from_float;
using gemm::to_float;

// C[m, scatter(c0 + j)] = sum_kk A[m, gather(a0 + kk)] B_g[kk, j] (+ bias[c0 + j]), where the packed
// block W_g is (n, k) row-major: B_g[kk, j] = W_g[j, kk] (forward) or W_g[kk, j] (grad_input).
template <typename T, bool W_TRANSPOSED>
struct MatmulProblem {
  const T* x;
  int64_t x_stride_m, x_stride_k;
  const int64_t* x_index;
  const T* bias;
  T* y;
  int64_t y_stride_m;
  const int64_t* y_index;
  int64_t M;
  static constexpr int64_t taps = 1;

  __device__ __forceinline__ T a(int64_t m, int64_t kk, int64_t a0) const {
    const int64_t col = x_index ? x_index[a0 + kk] : a0 + kk;
    return x[m * x_stride_m + col * x_stride_k];
  }
  __device__ __forceinline__ T b(const T* wg, int64_t kk, int64_t j, int64_t inner, int64_t width) const {
    return W_TRANSPOSED ? wg[kk * width + j] : wg[j * inner + kk];
  }
  __device__ __forceinline__ void store(int64_t m, int64_t j, int64_t c0, float v) const {
    if (bias) v += to_float(bias[c0 + j]);
    const int64_t col = y_index ? y_index[c0 + j] : c0 + j;
    y[m * y_stride_m + col] = from_float<T>(v);
  }
};

void check_operands(const Tensor& a, const char* a_name, int64_t cols, const Tensor& weight, const GroupOffsets& off) {
  TORCH_CHECK(a.dim() == 2 && a.size(1) == cols, a_name, " must have shape (M, ", cols, "), got ", a.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.numel() == off.weight.back(), "weight must have shape (",
              off.weight.back(), ",), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == a.scalar_type(), "weight has dtype ", weight.scalar_type(), " but ", a_name,
              " has ", a.scalar_type());
}

// out = grouped(a) @ W_g (+ bias): a's columns grouped by a_off (gathered by a_index), out's by
// c_off (scattered by c_index).
template <bool W_TRANSPOSED>
Tensor grouped_matmul(const Tensor& a, const Tensor& weight, const OptTensor& bias, const GroupOffsets& off,
                      const std::vector<int64_t>& a_off, const std::vector<int64_t>& c_off, const OptTensor& a_index,
                      const OptTensor& c_index) {
  const Tensor w = weight.contiguous();
  const OptTensor b = bias.has_value() ? OptTensor(bias->contiguous()) : std::nullopt;
  Tensor out = at::empty({a.size(0), c_off.back()}, a.options());
  AT_DISPATCH_REDUCED_FLOATING_TYPES(a.scalar_type(), "splitkern_block_diag_mm_cuda", [&] {
    using T = typename gemm::CudaType<scalar_t>::type;
    const MatmulProblem<T, W_TRANSPOSED> problem{
        reinterpret_cast<const T*>(a.data_ptr<scalar_t>()), a.stride(0), a.stride(1), gemm::index_ptr(a_index),
        b.has_value() ? reinterpret_cast<const T*>(b->data_ptr<scalar_t>()) : nullptr,
        reinterpret_cast<T*>(out.data_ptr<scalar_t>()), out.stride(0), gemm::index_ptr(c_index), a.size(0)};
    gemm::launch<T>(problem, reinterpret_cast<const T*>(w.data_ptr<scalar_t>()), a_off, c_off, off.weight);
  });
  return out;
}

Tensor block_diag_mm_cuda(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                          IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index) {
  if (!gemm::has_tensor_core_kernel(x))
    return block_diag_mm_aten(x, weight, bias, in_sizes, out_sizes, in_index, out_index);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto off = group_offsets(in_sizes, out_sizes, 1);
  check_operands(x, "x", off.in.back(), weight, off);
  return grouped_matmul<false>(x, weight, bias, off, off.in, off.out, in_index, out_index);
}

Tensor block_diag_mm_grad_input_cuda(const Tensor& grad_out, const Tensor& weight, IntArrayRef in_sizes,
                                     IntArrayRef out_sizes, const OptTensor& in_index,
                                     const OptTensor& out_index) {
  if (!gemm::has_tensor_core_kernel(grad_out))
    return block_diag_mm_grad_input_aten(grad_out, weight, in_sizes, out_sizes, in_index, out_index);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const auto off = group_offsets(in_sizes, out_sizes, 1);
  check_operands(grad_out, "grad_out", off.out.back(), weight, off);
  return grouped_matmul<true>(grad_out, weight, std::nullopt, off, off.out, off.in, out_index, in_index);
}

}  // namespace

TORCH_LIBRARY_IMPL(splitkern, CUDA, m) {
  m.impl("ext_block_diag_mm", &block_diag_mm_cuda);
  m.impl("ext_block_diag_mm_grad_input", &block_diag_mm_grad_input_cuda);
}

}  // namespace splitkern
