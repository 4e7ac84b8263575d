// Shared declarations of splitkern's C++ kernels (csrc/*.cpp) and CUDA kernels (csrc/cuda/*.cu).
//
// Semantics are those of the Python ops in splitkern/ops (see their docstrings): packed
// block-diagonal weights, groups given by in_sizes/out_sizes, optional int64 permutations
// in_index (fused gather of input columns/channels) and out_index (fused scatter).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace splitkern {

using at::IntArrayRef;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Prefix sums of the group sizes (G + 1 entries each) and of the packed weight blocks.
struct GroupOffsets {
  std::vector<int64_t> in, out, weight;
  int64_t groups() const { return static_cast<int64_t>(in.size()) - 1; }
  bool equal() const;  // every group has the same (k, n) and at least one weight
};
GroupOffsets group_offsets(IntArrayRef in_sizes, IntArrayRef out_sizes, int64_t taps);

// t[:, index] (dim 1) and its inverse out[:, index[j]] = t[:, j]; identity for nullopt.
Tensor gather_dim1(const Tensor& t, const OptTensor& index);
Tensor scatter_dim1(const Tensor& t, const OptTensor& index);

// ATen compositions (per-group GEMM / convolution calls): the CPU kernels, and the CUDA
// path for the dtypes without a custom CUDA kernel.
Tensor block_diag_mm_aten(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                          IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index);
Tensor block_diag_mm_grad_input_aten(const Tensor& grad_out, const Tensor& weight, IntArrayRef in_sizes,
                                     IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index);
Tensor grouped_conv_aten(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                         IntArrayRef out_sizes, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                         IntArrayRef dilation, const OptTensor& in_index, const OptTensor& out_index);
std::tuple<Tensor, Tensor> group_weight_reg_gemms_aten(const Tensor& weight, const Tensor& p, const Tensor& q);
std::tuple<Tensor, Tensor, Tensor> group_weight_reg_gemms_backward_aten(const Tensor& weight, const Tensor& p,
                                                                         const Tensor& q, const Tensor& grad_a,
                                                                         const Tensor& grad_b);

}  // namespace splitkern
