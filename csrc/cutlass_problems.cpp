// The CUTLASS problem tables' index math (csrc/cutlass/problems.h) on the host, for every build:
// ext_block_diag_mm_cutlass_problems lists, per GEMM the CUTLASS kernels would run, its
// (m, n, k, a_off, lda, b_off, ldb, d_off, ldd), so CPU tests check the arithmetic the GPU runs.
#include <torch/library.h>

#include <vector>

#include "cutlass/problems.h"
#include "ops.h"

namespace splitkern {
namespace {

Tensor cutlass_problems_table(int64_t pass, IntArrayRef in_sizes, IntArrayRef out_sizes, int64_t rows) {
  TORCH_CHECK(pass >= 0 && pass <= 2, "pass must be 0 (forward), 1 (grad_input) or 2 (grad_weight), got ", pass);
  TORCH_CHECK(in_sizes.size() == out_sizes.size() && !in_sizes.empty(),
              "in_sizes and out_sizes must list the same number (>= 1) of groups");
  TORCH_CHECK(rows >= 0, "m must be >= 0, got ", rows);
  const auto tables = cutlass_problems::group_tables(in_sizes, out_sizes, rows);
  std::vector<int64_t> rows_out;
  for (const auto& table : tables) {
    for (int i = 0; i < table.count; ++i) {
      const auto p = cutlass_problems::problem(static_cast<cutlass_problems::Pass>(pass), table, i);
      rows_out.insert(rows_out.end(), {p.m, p.n, p.k, p.a_off, p.lda, p.b_off, p.ldb, p.d_off, p.ldd});
    }
  }
  const int64_t count = static_cast<int64_t>(rows_out.size() / 9);
  return at::tensor(rows_out, at::kLong).view({count, 9});
}

}  // namespace

TORCH_LIBRARY_IMPL(splitkern, CompositeExplicitAutograd, m) {
  m.impl("ext_block_diag_mm_cutlass_problems", &cutlass_problems_table);
}

}  // namespace splitkern
