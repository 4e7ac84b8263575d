// The tensor-core grouped-GEMM mainloop shared by block_diag_mm.cu and grouped_conv.cu.
//
// For every group g (blockIdx.z) a CTA computes a kBM x kBN tile of
//   C_g[m, j] = sum_kk A_g[m, kk] * B_g[kk, j]
// with 4 warps (2 x 2), each warp 32 x 32 as 2 x 2 wmma 16x16x16 fragments, fp32 accumulation.
// A `Problem` says where the operands live: `a(m, kk, g_first_channel)`, `b(w_block, kk, j,
// inner, width)` and `store(m, j, c0, value)` — that is where gathers, implicit im2col and
// scatters are fused. blockIdx.y runs over the widest group's columns; CTAs past their own
// group's width exit at once, so ragged groups need no tile table and no host-to-device copy:
// the group offsets travel in the kernel parameters (kMaxGroups per launch).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <vector>

#include "../ops.h"
#include "dtype.cuh"

namespace splitkern {
namespace gemm {

constexpr int kMaxGroups = 64;  // per launch; more groups take several launches
constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 128;
constexpr int kPadA = 8, kPadB = 8, kPadC = 4;  // smem row padding against bank conflicts

struct GroupTable {
  int64_t a_off[kMaxGroups + 1];  // first A channel of each group (inner dim = channels * taps)
  int64_t c_off[kMaxGroups + 1];  // first output column of each group
  int64_t w_off[kMaxGroups + 1];  // first element of each packed weight block
};

template <typename T, typename Problem>
__global__ void __launch_bounds__(kThreads, 4) grouped_gemm_kernel(Problem problem, const T* __restrict__ w,
                                                                 GroupTable table) {
  using namespace nvcuda;
  const int g = blockIdx.z;
  const int64_t a0 = table.a_off[g], inner = (table.a_off[g + 1] - a0) * problem.taps;
  const int64_t c0 = table.c_off[g], width = table.c_off[g + 1] - c0;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM, n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  if (n0 >= width) return;  // this group is narrower than the widest one
  const T* wg = w + table.w_off[g];

  __shared__ __align__(32) T a_tile[kBM][kBK + kPadA];
  __shared__ __align__(32) T b_tile[kBK][kBN + kPadB];
  __shared__ __align__(32) float c_tile[kBM][kBN + kPadC];

  const int warp = threadIdx.x / 32, warp_m = (warp / 2) * 32, warp_n = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const T zero = from_float<T>(0.0f);
  for (int64_t k0 = 0; k0 < inner; k0 += kBK) {
    for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
      const int r = e / kBK, kk = e % kBK;
      const int64_t m = m0 + r, col = k0 + kk;
      a_tile[r][kk] = (m < problem.M && col < inner) ? problem.a(m, col, a0) : zero;
    }
    for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
      const int kk = e / kBN, cc = e % kBN;
      const int64_t row = k0 + kk, col = n0 + cc;
      b_tile[kk][cc] = (row < inner && col < width) ? problem.b(wg, row, col, inner, width) : zero;
    }
    __syncthreads();
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &a_tile[warp_m + 16 * i][kk], kBK + kPadA);
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &b_tile[kk][warp_n + 16 * j], kBN + kPadB);
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&c_tile[warp_m + 16 * i][warp_n + 16 * j], acc[i][j], kBN + kPadC,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kBM * kBN; e += kThreads) {
    const int r = e / kBN, cc = e % kBN;
    const int64_t m = m0 + r, col = n0 + cc;
    if (m < problem.M && col < width) problem.store(m, col, c0, c_tile[r][cc]);
  }
}

// Launch `problem` for all groups, kMaxGroups per launch, on the current stream.
template <typename T, typename Problem>
void launch(const Problem& problem, const T* w, const std::vector<int64_t>& a_off, const std::vector<int64_t>& c_off,
            const std::vector<int64_t>& w_off) {
  const int64_t groups = static_cast<int64_t>(a_off.size()) - 1;
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t first = 0; first < groups; first += kMaxGroups) {
    const int64_t count = std::min<int64_t>(kMaxGroups, groups - first);
    GroupTable table;
    int64_t widest = 0;
    for (int64_t i = 0; i <= count; ++i) {
      table.a_off[i] = a_off[first + i];
      table.c_off[i] = c_off[first + i];
      table.w_off[i] = w_off[first + i];
      if (i < count) widest = std::max(widest, c_off[first + i + 1] - c_off[first + i]);
    }
    if (problem.M == 0 || widest == 0) continue;
    const int64_t tiles_m = (problem.M + kBM - 1) / kBM, tiles_n = (widest + kBN - 1) / kBN;
    TORCH_CHECK(tiles_m <= 2147483647 && tiles_n <= 65535, "grouped GEMM too large for one launch: ",
                problem.M, " rows x ", widest, " columns");
    const dim3 grid(static_cast<unsigned>(tiles_m), static_cast<unsigned>(tiles_n), static_cast<unsigned>(count));
    grouped_gemm_kernel<T, Problem><<<grid, kThreads, 0, stream>>>(problem, w, table);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

inline bool has_tensor_core_kernel(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

inline const int64_t* index_ptr(const OptTensor& index) {
  return index.has_value() ? index->data_ptr<int64_t>() : nullptr;
}

}  // namespace gemm
}  // namespace splitkern
