// block_diag_mm grad_weight on CUTLASS sm90: dW_g = dY[:, out_g]^T X[:, in_g] (A column-major, B row-major).
#include "gemm_sm90.cuh"

namespace splitkern {
namespace cutlass_sm90 {

void run_grad_weight(const cutlass_problems::GroupTable& table, at::ScalarType dtype, const void* a,
                     const void* b, void* d, at::Device device) {
  run_16bit<cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>(cutlass_problems::kGradWeight, table, dtype, a,
                                                                     b, d, device);
}

}  // namespace cutlass_sm90
}  // namespace splitkern
