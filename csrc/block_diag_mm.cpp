// block_diag_mm on CPU: one ATen GEMM per group on column slices (one bmm when all groups
// are equal), gather/scatter by index_select/index_copy. Also the CUDA path for dtypes
// without a custom kernel (csrc/cuda/block_diag_mm.cu).
#include <torch/library.h>

#include "ops.h"

namespace splitkern {
namespace {

Tensor block(const Tensor& weight, const GroupOffsets& off, int64_t g) {
  const int64_t k = off.in[g + 1] - off.in[g], n = off.out[g + 1] - off.out[g];
  return weight.narrow(0, off.weight[g], n * k).view({n, k});
}

// (M, G*c) viewed as (G, M, c): the batched operand of equal groups.
Tensor batched(const Tensor& t, int64_t groups) {
  return t.view({t.size(0), groups, t.size(1) / groups}).transpose(0, 1);
}

Tensor unbatched(const Tensor& t) { return t.transpose(0, 1).reshape({t.size(1), -1}); }

}  // namespace

Tensor block_diag_mm_aten(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                          IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index) {
  const auto off = checked_matmul(MatmulOperand::kX, x, weight, bias, in_sizes, out_sizes, in_index, out_index);
  const Tensor xg = gather_dim1(x, in_index);
  const int64_t G = off.groups();
  if (off.equal() && x.size(0) > 0) {
    const int64_t k = off.in[1], n = off.out[1];
    Tensor y = unbatched(at::bmm(batched(xg.contiguous(), G), weight.reshape({G, n, k}).transpose(1, 2)));
    if (bias.has_value()) y.add_(*bias);
    return scatter_dim1(y, out_index);
  }
  Tensor y = at::empty({x.size(0), off.out.back()}, x.options());
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k = off.in[g + 1] - off.in[g], n = off.out[g + 1] - off.out[g];
    if (n == 0) continue;
    Tensor yg = y.narrow(1, off.out[g], n);
    if (k == 0 || x.size(0) == 0) {  // no inputs: the bias alone
      if (bias.has_value()) yg.copy_(bias->narrow(0, off.out[g], n).expand_as(yg));
      else yg.zero_();
      continue;
    }
    const Tensor xk = xg.narrow(1, off.in[g], k), wt = block(weight, off, g).t();
    if (bias.has_value()) yg.copy_(at::addmm(bias->narrow(0, off.out[g], n), xk, wt));
    else yg.copy_(at::mm(xk, wt));
  }
  return scatter_dim1(y, out_index);
}

Tensor block_diag_mm_grad_input_aten(const Tensor& grad_out, const Tensor& weight, IntArrayRef in_sizes,
                                     IntArrayRef out_sizes, const OptTensor& in_index,
                                     const OptTensor& out_index) {
  const auto off = checked_matmul(MatmulOperand::kGradOut, grad_out, weight, std::nullopt, in_sizes, out_sizes,
                                  in_index, out_index);
  const Tensor dyg = gather_dim1(grad_out, out_index);
  const int64_t G = off.groups();
  if (off.equal() && grad_out.size(0) > 0) {
    const int64_t k = off.in[1], n = off.out[1];
    return scatter_dim1(unbatched(at::bmm(batched(dyg.contiguous(), G), weight.reshape({G, n, k}))), in_index);
  }
  Tensor dx = at::empty({grad_out.size(0), off.in.back()}, grad_out.options());
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k = off.in[g + 1] - off.in[g], n = off.out[g + 1] - off.out[g];
    if (k == 0) continue;
    Tensor dxg = dx.narrow(1, off.in[g], k);
    if (n == 0 || grad_out.size(0) == 0) dxg.zero_();
    else dxg.copy_(at::mm(dyg.narrow(1, off.out[g], n), block(weight, off, g)));
  }
  return scatter_dim1(dx, in_index);
}

Tensor block_diag_mm_grad_weight_aten(const Tensor& grad_out, const Tensor& x, IntArrayRef in_sizes,
                                      IntArrayRef out_sizes, const OptTensor& in_index,
                                      const OptTensor& out_index) {
  const auto off = checked_matmul_grad_weight(grad_out, x, in_sizes, out_sizes, in_index, out_index);
  const Tensor xg = gather_dim1(x, in_index), dyg = gather_dim1(grad_out, out_index);
  Tensor dw = at::empty({off.weight.back()}, x.options());
  for (int64_t g = 0; g < off.groups(); ++g) {
    const int64_t k = off.in[g + 1] - off.in[g], n = off.out[g + 1] - off.out[g];
    if (n * k == 0) continue;
    Tensor dwg = block(dw, off, g);
    if (x.size(0) == 0) dwg.zero_();
    else dwg.copy_(at::mm(dyg.narrow(1, off.out[g], n).t(), xg.narrow(1, off.in[g], k)));
  }
  return dw;
}

Tensor block_diag_mm_grad_bias_aten(const Tensor& grad_out, const OptTensor& out_index) {
  TORCH_CHECK(grad_out.dim() == 2, "grad_out must be 2-D (M, N), got ", grad_out.sizes());
  if (out_index.has_value()) {
    TORCH_CHECK(out_index->dim() == 1 && out_index->size(0) == grad_out.size(1) &&
                    out_index->scalar_type() == at::kLong,
                "out_index must be an int64 tensor of shape (", grad_out.size(1), ",), got ",
                out_index->scalar_type(), " ", out_index->sizes());
    TORCH_CHECK(out_index->device() == grad_out.device(), "out_index is on ", out_index->device(),
                " but grad_out is on ", grad_out.device());
  }
  const Tensor sums = grad_out.sum(0);
  return out_index.has_value() ? sums.index_select(0, *out_index) : sums;
}

TORCH_LIBRARY_IMPL(splitkern, CPU, m) {
  m.impl("ext_block_diag_mm", &block_diag_mm_aten);
  m.impl("ext_block_diag_mm_grad_input", &block_diag_mm_grad_input_aten);
  m.impl("ext_block_diag_mm_grad_weight", &block_diag_mm_grad_weight_aten);
  m.impl("ext_block_diag_mm_grad_bias", &block_diag_mm_grad_bias_aten);
}

// The bias gradient is one ATen column sum on CUDA too (see block_diag_mm:cuda in kernel_info()).
TORCH_LIBRARY_IMPL(splitkern, CUDA, m) { m.impl("ext_block_diag_mm_grad_bias", &block_diag_mm_grad_bias_aten); }

const KernelInfo cpu_info("block_diag_mm:cpu", "C++: one ATen GEMM per group (one bmm when groups are equal)");

}  // namespace splitkern
