// Shared declarations of splitkern's C++ kernels (csrc/*.cpp) and CUDA kernels (csrc/cuda/*.cu).
//
// Semantics are those of the Python ops in splitkern/ops (see their docstrings): packed
// block-diagonal weights, groups given by in_sizes/out_sizes, optional int64 permutations
// in_index (fused gather of input columns/channels) and out_index (fused scatter).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace splitkern {

using at::IntArrayRef;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

// One "op:device" kernel of this build and what runs it, listed by kernels()/kernel_info(). Each
// op's .cpp/.cu file declares its own as a static object, so a build lists what it compiled.
struct KernelInfo {
  KernelInfo(const char* key, const char* what);
};
std::vector<std::pair<std::string, std::string>> kernel_info();  // sorted by key

// Prefix sums of the group sizes (G + 1 entries each) and of the packed weight blocks.
struct GroupOffsets {
  std::vector<int64_t> in, out, weight;
  int64_t groups() const { return static_cast<int64_t>(in.size()) - 1; }
  bool equal() const;  // every group has the same (k, n) and at least one weight
};
GroupOffsets group_offsets(IntArrayRef in_sizes, IntArrayRef out_sizes, int64_t taps);

// Argument checks shared by the C++ and CUDA kernels (TORCH_CHECK, naming the argument).
void check_matrix(const Tensor& t, const char* name, int64_t cols, const char* cols_name);  // (M, cols)
void check_weight(const Tensor& weight, const GroupOffsets& off);                          // packed, 1-D
void check_like(const Tensor& ref, const char* ref_name, const Tensor& t, const char* name);  // dtype, device
void check_like_weight(const Tensor& weight, const Tensor& t, const char* name);  // check_like(weight, ...)
// Shapes, dtypes and devices of the optional operands (not the index values: that would sync).
void check_bias_and_indices(const OptTensor& bias, const OptTensor& in_index, const OptTensor& out_index,
                            int64_t in_features, int64_t out_features, const Tensor& weight);

// A block_diag_mm call's group offsets, after checking its operands: the activation `a` (x (M, K)
// for the forward, grad_out (M, N) for grad_input), the packed weight, the bias and the indices.
enum class MatmulOperand { kX, kGradOut };
GroupOffsets checked_matmul(MatmulOperand which, const Tensor& a, const Tensor& weight, const OptTensor& bias,
                            IntArrayRef in_sizes, IntArrayRef out_sizes, const OptTensor& in_index,
                            const OptTensor& out_index);
// The same for grad_weight: grad_out (M, N) and x (M, K), same rows, dtype and device.
GroupOffsets checked_matmul_grad_weight(const Tensor& grad_out, const Tensor& x, IntArrayRef in_sizes,
                                        IntArrayRef out_sizes, const OptTensor& in_index,
                                        const OptTensor& out_index);

// A 2-D convolution's kernel, stride, padding and dilation (2 entries each).
struct ConvGeometry {
  std::vector<int64_t> kernel, stride, padding, dilation;
  int64_t taps() const { return kernel[0] * kernel[1]; }
  int64_t out_size(int64_t size, int dim) const;  // output height (dim 0) or width (dim 1)
};
// A grouped_conv call's geometry and group offsets, after checking x (N, C, H, W) and the
// packed weight against them (and that the output is not empty).
std::pair<ConvGeometry, GroupOffsets> checked_conv(const Tensor& x, const Tensor& weight, IntArrayRef in_sizes,
                                                   IntArrayRef out_sizes, IntArrayRef kernel_size,
                                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation);
// checked_conv for a backward call, plus grad_out's shape, dtype and device and the indices.
std::pair<ConvGeometry, GroupOffsets> checked_conv_backward(const Tensor& grad_out, const Tensor& x,
                                                            const Tensor& weight, IntArrayRef in_sizes,
                                                            IntArrayRef out_sizes, IntArrayRef kernel_size,
                                                            IntArrayRef stride, IntArrayRef padding,
                                                            IntArrayRef dilation, const OptTensor& in_index,
                                                            const OptTensor& out_index);
// The regulariser's weight (D_out, D_in, ...), p (G, D_in), q (G, D_out) and, for the backward,
// grad_a (G, D_in) and grad_b (G, D_out): shapes, floating dtypes, and every tensor on weight's device.
void check_reg(const Tensor& weight, const Tensor& p, const Tensor& q);
void check_reg_backward(const Tensor& weight, const Tensor& p, const Tensor& q, const Tensor& grad_a,
                        const Tensor& grad_b);

// t[:, index] (dim 1) and its inverse out[:, index[j]] = t[:, j]; identity for nullopt.
Tensor gather_dim1(const Tensor& t, const OptTensor& index);
Tensor scatter_dim1(const Tensor& t, const OptTensor& index);

// ATen compositions (per-group GEMM / convolution calls): the CPU kernels, and the CUDA
// path for the dtypes without a custom CUDA kernel.
Tensor block_diag_mm_aten(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                          IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index);
Tensor block_diag_mm_grad_input_aten(const Tensor& grad_out, const Tensor& weight, IntArrayRef in_sizes,
                                     IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index);
Tensor block_diag_mm_grad_weight_aten(const Tensor& grad_out, const Tensor& x, IntArrayRef in_sizes,
                                      IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index);
Tensor grouped_conv_aten(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                         IntArrayRef out_sizes, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                         IntArrayRef dilation, const OptTensor& in_index, const OptTensor& out_index);
Tensor grouped_conv_grad_input_aten(const Tensor& grad_out, const Tensor& weight, const Tensor& x,
                                    IntArrayRef in_sizes, IntArrayRef out_sizes, IntArrayRef kernel_size,
                                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                    const OptTensor& in_index, const OptTensor& out_index);
Tensor grouped_conv_grad_weight_aten(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                     IntArrayRef in_sizes, IntArrayRef out_sizes, IntArrayRef kernel_size,
                                     IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                     const OptTensor& in_index, const OptTensor& out_index);
std::tuple<Tensor, Tensor> group_weight_reg_gemms_aten(const Tensor& weight, const Tensor& p, const Tensor& q);
std::tuple<Tensor, Tensor, Tensor> group_weight_reg_gemms_backward_aten(const Tensor& weight, const Tensor& p,
                                                                         const Tensor& q, const Tensor& grad_a,
                                                                         const Tensor& grad_b);

}  // namespace splitkern
