// The per-group GEMM problems of block_diag_mm's three passes, as CUTLASS's ptr-array grouped GEMM
// takes them: (m, n, k), element offsets of A, B and D from their tensors' starts, and each
// operand's leading dimension. Plain C++ that compiles as host code (csrc/cutlass_problems.cpp,
// tested on CPU against the layout) and as device code (the CUDA kernel that fills CUTLASS's
// problem and pointer arrays on the GPU, csrc/cutlass/gemm_sm90.cuh), so the index math
// the GPU runs is the one the CPU tests check.
//
//   pass         D (row-major)           A                          B                          m    n    k
//   forward      Y[:, out_g]   (ld N)    X[:, in_g]   row-major ld K W_g (n_g,k_g) = B col-major  M    n_g  k_g
//   grad_input   dX[:, in_g]   (ld K)    dY[:, out_g] row-major ld N W_g as (k, n) row-major      M    k_g  n_g
//   grad_weight  dW_g (n_g,k_g)(ld k_g)  dY[:, out_g]^T col-major ld N  X[:, in_g] row-major ld K n_g  k_g  M
//
// K = sum k_g, N = sum n_g. Only groups with a non-empty product are listed (a group without
// inputs contributes zeros to the forward, see block_diag_mm_cutlass.cpp); the list is compacted on the
// host from the group sizes, which the layer knows when it is built.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define SPLITKERN_CUTLASS_HD __host__ __device__
#else
#define SPLITKERN_CUTLASS_HD
#endif

namespace splitkern {
namespace cutlass_problems {

enum Pass : int { kForward = 0, kGradInput = 1, kGradWeight = 2 };

// The most groups one launch takes: the table travels as a kernel parameter (no device copy, so a
// call is CUDA-graph capturable without a warm-up); more groups take more launches.
constexpr int kMaxGroups = 128;

// Group g's place in the layout: column offsets of its inputs and outputs, its packed block's
// offset, and its sizes.
struct Group {
  int64_t in_off, out_off, w_off, k, n;
};

struct GroupTable {
  int count;
  int64_t rows;             // M: the batch rows
  int64_t in_features;      // K
  int64_t out_features;     // N
  Group group[kMaxGroups];  // the listed (non-empty) groups
};

struct Problem {
  int64_t m, n, k;
  int64_t a_off, lda, b_off, ldb, d_off, ldd;
};

SPLITKERN_CUTLASS_HD inline Problem problem(Pass pass, const GroupTable& t, int i) {
  const Group g = t.group[i];
  if (pass == kForward) {
    return {t.rows, g.n, g.k, g.in_off, t.in_features, g.w_off, g.k, g.out_off, t.out_features};
  }
  if (pass == kGradInput) {
    return {t.rows, g.k, g.n, g.out_off, t.out_features, g.w_off, g.k, g.in_off, t.in_features};
  }
  return {g.n, g.k, t.rows, g.out_off, t.out_features, g.in_off, t.in_features, g.w_off, g.k};
}

// Whether group (k, n) has a GEMM to run with `rows` batch rows (in every pass: an empty inner or
// outer size leaves its output block zero, which the caller writes).
inline bool listed(int64_t k, int64_t n, int64_t rows) { return k > 0 && n > 0 && rows > 0; }

// The tables for groups (in_sizes, out_sizes): the listed groups, kMaxGroups per table (none when no
// group has a GEMM). Host code.
template <typename Sizes>
inline std::vector<GroupTable> group_tables(const Sizes& in_sizes, const Sizes& out_sizes, int64_t rows) {
  int64_t in_features = 0, out_features = 0;
  for (size_t g = 0; g < in_sizes.size(); ++g) {
    in_features += in_sizes[g];
    out_features += out_sizes[g];
  }
  std::vector<GroupTable> tables;
  int64_t in_off = 0, out_off = 0, w_off = 0;
  for (size_t g = 0; g < in_sizes.size(); ++g) {
    const int64_t k = in_sizes[g], n = out_sizes[g];
    if (listed(k, n, rows)) {
      if (tables.empty() || tables.back().count == kMaxGroups) {
        tables.push_back(GroupTable{0, rows, in_features, out_features, {}});
      }
      GroupTable& t = tables.back();
      t.group[t.count++] = Group{in_off, out_off, w_off, k, n};
    }
    in_off += k;
    out_off += n;
    w_off += k * n;
  }
  return tables;
}

}  // namespace cutlass_problems
}  // namespace splitkern
