// block_diag_mm grad_input on CUTLASS sm90: dX[:, in_g] = dY[:, out_g] W_g (A and B row-major).
#include "gemm_sm90.cuh"

namespace splitkern {
namespace cutlass_sm90 {

void run_grad_input(const cutlass_problems::GroupTable& table, at::ScalarType dtype, const void* a, const void* b,
                    void* d, at::Device device) {
  run_16bit<cutlass::layout::RowMajor, cutlass::layout::RowMajor>(cutlass_problems::kGradInput, table, dtype, a, b,
                                                                  d, device);
}

}  // namespace cutlass_sm90
}  // namespace splitkern
