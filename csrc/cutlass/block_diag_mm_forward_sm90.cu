// block_diag_mm forward on CUTLASS sm90: Y[:, out_g] = X[:, in_g] W_g^T (A row-major, B column-major).
#include "gemm_sm90.cuh"

namespace splitkern {
namespace cutlass_sm90 {

void run_forward(const cutlass_problems::GroupTable& table, at::ScalarType dtype, const void* a, const void* b,
                 void* d, at::Device device) {
  run_16bit<cutlass::layout::RowMajor, cutlass::layout::ColumnMajor>(cutlass_problems::kForward, table, dtype, a, b,
                                                                     d, device);
}

}  // namespace cutlass_sm90
}  // namespace splitkern
