// block_diag_mm on CUDA: for fp16/bf16, the forward, grad_input and grad_weight are each ONE
// tensor-core grouped-GEMM launch (per 64 groups; grouped_gemm.cuh), with the gathers fused
// into the operand loads and bias + scatter into the epilogue:
//   forward     Y[:, out_g]   = X[:, in_g] W_g^T + b_g     rows M,   cols n_g, inner k_g
//   grad_input  dX[:, in_g]   = dY[:, out_g] W_g          rows M,   cols k_g, inner n_g
//   grad_weight dW_g          = dY[:, out_g]^T X[:, in_g]  rows n_g, cols k_g, inner M
// (in_g / out_g: group g's columns, through in_index / out_index when given). fp32/fp64 run the
// per-group cuBLAS composition of csrc/block_diag_mm.cpp (tf32 then follows
// torch.backends.cuda.matmul.allow_tf32).
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include "grouped_gemm.cuh"

namespace splitkern {
namespace {

// A strided (M, C) matrix whose column j is read at index[j] when an index is given.
template <typename T>
struct Columns {
  T* data;
  int64_t stride_m, stride_c;
  const int64_t* index;

  SPLITKERN_HD T& at(int64_t m, int64_t col) const {
    return data[m * stride_m + (index ? index[col] : col) * stride_c];
  }
};

template <typename T>
Columns<T> columns(const Tensor& t, const OptTensor& index) {
  return {reinterpret_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), gemm::index_ptr(index)};
}

// forward (W_TRANSPOSED = false) and grad_input (true): out[m, c_off + j] = sum_kk A[m, a_off + kk]
// B[kk, j] (+ bias[c_off + j]) with the packed (n, k) block W_g at b_off: B = W_g^T, or W_g.
template <typename T, bool W_TRANSPOSED>
struct MatmulProblem {
  Columns<const T> in;
  const T* w;
  const T* bias;
  Columns<T> out;
  static constexpr bool kAContiguousInK = true, kBContiguousInN = W_TRANSPOSED;

  SPLITKERN_HD T a(const Group& g, int64_t m, int64_t kk) const { return in.at(m, g.a_off + kk); }
  SPLITKERN_HD T b(const Group& g, int64_t kk, int64_t j) const {
    return W_TRANSPOSED ? w[g.b_off + kk * g.cols + j] : w[g.b_off + j * g.inner + kk];
  }
  SPLITKERN_HD void store(const Group& g, int64_t m, int64_t j, float v) const {
    if (bias) v += to_float(bias[g.c_off + j]);
    out.at(m, g.c_off + j) = from_float<T>(v);
  }
};

// grad_weight: dW_g[r, j] = sum_m dY[m, a_off + r] X[m, b_off + j], stored packed at c_off.
template <typename T>
struct GradWeightProblem {
  Columns<const T> grad_out, x;
  T* grad_w;
  static constexpr bool kAContiguousInK = false, kBContiguousInN = true;

  SPLITKERN_HD T a(const Group& g, int64_t r, int64_t m) const { return grad_out.at(m, g.a_off + r); }
  SPLITKERN_HD T b(const Group& g, int64_t m, int64_t j) const { return x.at(m, g.b_off + j); }
  SPLITKERN_HD void store(const Group& g, int64_t r, int64_t j, float v) const {
    grad_w[g.c_off + r * g.cols + j] = from_float<T>(v);
  }
};

// forward (W_TRANSPOSED = false) or grad_input (true): a's columns gathered by a_index, the
// output's scattered by c_index.
template <bool W_TRANSPOSED>
Tensor grouped_matmul(const Tensor& a, const Tensor& weight, const OptTensor& bias, const GroupOffsets& off,
                      const OptTensor& a_index, const OptTensor& c_index) {
  constexpr gemm::Pass pass = W_TRANSPOSED ? gemm::Pass::kGradInput : gemm::Pass::kForward;
  const Tensor w = weight.contiguous();
  const OptTensor b = bias.has_value() ? OptTensor(bias->contiguous()) : std::nullopt;
  Tensor out = at::empty({a.size(0), W_TRANSPOSED ? off.in.back() : off.out.back()}, a.options());
  gemm::launch_pass(a, pass, off, a.size(0), 1, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    return MatmulProblem<T, W_TRANSPOSED>{columns<const T>(a, a_index), reinterpret_cast<const T*>(w.data_ptr()),
                                          b.has_value() ? reinterpret_cast<const T*>(b->data_ptr()) : nullptr,
                                          columns<T>(out, c_index)};
  });
  return out;
}

// The tensor-core entry points (fp16/bf16; CPU tensors run the host emulation).

Tensor forward(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
               IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const auto off = checked_matmul(MatmulOperand::kX, x, weight, bias, in_sizes, out_sizes, in_index, out_index);
  return grouped_matmul<false>(x, weight, bias, off, in_index, out_index);
}

Tensor grad_input(const Tensor& grad_out, const Tensor& weight, IntArrayRef in_sizes, IntArrayRef out_sizes,
                  const OptTensor& in_index, const OptTensor& out_index) {
  const at::OptionalDeviceGuard guard(at::device_of(grad_out));
  const auto off = checked_matmul(MatmulOperand::kGradOut, grad_out, weight, std::nullopt, in_sizes, out_sizes,
                                  in_index, out_index);
  return grouped_matmul<true>(grad_out, weight, std::nullopt, off, out_index, in_index);
}

Tensor grad_weight(const Tensor& grad_out, const Tensor& x, IntArrayRef in_sizes, IntArrayRef out_sizes,
                   const OptTensor& in_index, const OptTensor& out_index) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const auto off = checked_matmul_grad_weight(grad_out, x, in_sizes, out_sizes, in_index, out_index);
  Tensor grad_w = at::empty({off.weight.back()}, x.options());
  gemm::launch_pass(x, gemm::Pass::kGradWeight, off, x.size(0), 1, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    return GradWeightProblem<T>{columns<const T>(grad_out, out_index), columns<const T>(x, in_index),
                                reinterpret_cast<T*>(grad_w.data_ptr())};
  });
  return grad_w;
}

}  // namespace

using BlockDiagMmPasses = gemm::Passes<&forward, &block_diag_mm_aten, &grad_input, &block_diag_mm_grad_input_aten,
                                        &grad_weight, &block_diag_mm_grad_weight_aten>;
SPLITKERN_REGISTER_TENSOR_CORE_PASSES(
    block_diag_mm, BlockDiagMmPasses,
    "CUDA: fp16/bf16 forward, grad_input and grad_weight each one tensor-core (wmma) grouped-GEMM launch with fused "
    "gather/scatter (16-row tiles for M <= 16); fp32/fp64 one cuBLAS GEMM per group; grad_bias one column sum");

}  // namespace splitkern
