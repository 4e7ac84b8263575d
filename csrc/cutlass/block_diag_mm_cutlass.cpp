// block_diag_mm on CUTLASS sm90 grouped GEMMs (csrc/cutlass/*_sm90.cu): the entry points. Built only
// when setup.py compiles the CUTLASS objects (sm_90a, the nvidia-cutlass headers).
//
// TMA reads and writes 16-byte aligned starts and rows, so every group size must be a multiple of 8
// (splitkern.extension.block_diag_mm routes other layouts to the wmma kernels; here they are an
// error, never garbage). Permutations are a separate gather (index_select) before the GEMMs and a
// scatter after: 2 * M * K * 2 bytes moved for in_index, 2 * M * N * 2 for out_index (bf16/fp16),
// against M * (K + N) * 2 + K * N / G * 2 for the GEMMs themselves. The bias is one add over Y after
// (rounded once more than the wmma kernels' fp32 add: within the 16-bit tolerances).
// The group table travels as a ~5 KB kernel parameter: CUDA 12.1+ and an R530+ driver (any Hopper's).
#include <torch/library.h>

#include "../ops.h"
#include "launch.h"
#include "problems.h"

namespace splitkern {
namespace {

using cutlass_problems::GroupTable;

void check_cutlass(const Tensor& t, const char* name, IntArrayRef in_sizes, IntArrayRef out_sizes) {
  TORCH_CHECK(t.is_cuda(), "block_diag_mm (CUTLASS): ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              "block_diag_mm (CUTLASS): ", name, " must be fp16 or bf16, got ", t.scalar_type());
  for (size_t g = 0; g < in_sizes.size(); ++g) {
    TORCH_CHECK(in_sizes[g] % 8 == 0 && out_sizes[g] % 8 == 0, "block_diag_mm (CUTLASS): group ", g, " has ",
                in_sizes[g], " inputs and ", out_sizes[g], " outputs; TMA needs multiples of 8 (16-byte aligned "
                "starts and rows): use the wmma kernels for this layout");
  }
}

// A row-major operand TMA can read: contiguous, 16-byte aligned start (gathered through `index`).
Tensor operand(const Tensor& t, const OptTensor& index) {
  Tensor out = (index.has_value() ? t.index_select(1, *index) : t).contiguous();
  return reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 ? out.clone() : out;
}

// Whether some output block of the pass has no GEMM (an empty inner size): then D starts as zeros.
bool has_unlisted_output(IntArrayRef produced, IntArrayRef inner, int64_t rows) {
  for (size_t g = 0; g < produced.size(); ++g) {
    if (produced[g] > 0 && (inner[g] == 0 || rows == 0)) return true;
  }
  return false;
}

Tensor new_output(const Tensor& like, at::IntArrayRef shape, bool zeros) {
  return zeros ? at::zeros(shape, like.options()) : at::empty(shape, like.options());
}

Tensor forward(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
               IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index) {
  const auto off = checked_matmul(MatmulOperand::kX, x, weight, bias, in_sizes, out_sizes, in_index, out_index);
  check_cutlass(x, "x", in_sizes, out_sizes);
  const int64_t rows = x.size(0);
  const Tensor a = operand(x, in_index), w = operand(weight, std::nullopt);
  Tensor y = new_output(x, {rows, off.out.back()}, has_unlisted_output(out_sizes, in_sizes, rows));
  for (const GroupTable& t : cutlass_problems::group_tables(in_sizes, out_sizes, rows)) {
    cutlass_sm90::run_forward(t, x.scalar_type(), a.data_ptr(), w.data_ptr(), y.data_ptr(), x.device());
  }
  if (bias.has_value()) y.add_(*bias);
  return scatter_dim1(y, out_index);
}

Tensor grad_input(const Tensor& grad_out, const Tensor& weight, IntArrayRef in_sizes, IntArrayRef out_sizes,
                  const OptTensor& in_index, const OptTensor& out_index) {
  const auto off = checked_matmul(MatmulOperand::kGradOut, grad_out, weight, std::nullopt, in_sizes, out_sizes,
                                  in_index, out_index);
  check_cutlass(grad_out, "grad_out", in_sizes, out_sizes);
  const int64_t rows = grad_out.size(0);
  const Tensor a = operand(grad_out, out_index), w = operand(weight, std::nullopt);
  Tensor dx = new_output(grad_out, {rows, off.in.back()}, has_unlisted_output(in_sizes, out_sizes, rows));
  for (const GroupTable& t : cutlass_problems::group_tables(in_sizes, out_sizes, rows)) {
    cutlass_sm90::run_grad_input(t, grad_out.scalar_type(), a.data_ptr(), w.data_ptr(), dx.data_ptr(),
                                 grad_out.device());
  }
  return scatter_dim1(dx, in_index);
}

Tensor grad_weight(const Tensor& grad_out, const Tensor& x, IntArrayRef in_sizes, IntArrayRef out_sizes,
                   const OptTensor& in_index, const OptTensor& out_index) {
  const auto off = checked_matmul_grad_weight(grad_out, x, in_sizes, out_sizes, in_index, out_index);
  check_cutlass(x, "x", in_sizes, out_sizes);
  const int64_t rows = x.size(0);
  const Tensor a = operand(grad_out, out_index), b = operand(x, in_index);
  Tensor dw = new_output(x, {off.weight.back()}, rows == 0);
  for (const GroupTable& t : cutlass_problems::group_tables(in_sizes, out_sizes, rows)) {
    cutlass_sm90::run_grad_weight(t, x.scalar_type(), a.data_ptr(), b.data_ptr(), dw.data_ptr(), x.device());
  }
  return dw;
}

}  // namespace

TORCH_LIBRARY_IMPL(splitkern, CUDA, m) {
  m.impl("ext_block_diag_mm_cutlass", &forward);
  m.impl("ext_block_diag_mm_cutlass_grad_input", &grad_input);
  m.impl("ext_block_diag_mm_cutlass_grad_weight", &grad_weight);
}

const KernelInfo cutlass_info(
    "block_diag_mm_cutlass:cuda",
    "CUDA sm_90a, CUTLASS 3 ptr-array grouped GEMMs (TMA, warp-specialised cooperative wgmma, fp32 accumulation): "
    "fp16/bf16 forward, grad_input and grad_weight, one launch per 128 groups, group sizes multiples of 8");

}  // namespace splitkern
