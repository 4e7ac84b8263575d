// The tensor-core grouped-GEMM mainloop shared by block_diag_mm.cu and grouped_conv.cu.
//
// For every group g (blockIdx.z) a CTA computes a Tile::BM x Tile::BN tile of
//   C_g[r, j] = sum_kk A_g[r, kk] * B_g[kk, j],   C_g of shape rows_g x cols_g, kk < inner_g,
// with 4 warps, each warp FM x FN wmma 16x16x16 fragments, fp32 accumulation. A `Problem` says
// where the operands live: `a(group, r, kk)`, `b(group, kk, j)` and `store(group, r, j, value)`
// — that is where gathers, implicit im2col, transposes and scatters are fused — and which index
// of A and of B is contiguous in memory (the tile loaders let that index vary fastest across
// threads, so global loads coalesce). Each group's dimensions and the three offsets its Problem
// reads (`a_off`, `b_off`, `c_off`) travel in the kernel parameters (kMaxGroups per launch):
// ragged groups need no tile table, no host-to-device copy and no sync. blockIdx.x/y run over
// the largest group's row/column tiles; CTAs outside their own group's extent exit at once.
//
// Tile shapes: 64 x 64 (2 x 2 warps of 32 x 32), and 16 x 128 (1 x 4 warps of 16 x 32) when no
// group has more than 16 rows. The latter is this kernel's answer to small M (batch 1-16
// inference): the usual "swap A and B" trick exists for MMA instructions whose M is fixed
// large (wgmma: 64); wmma's 16 x 16 fragments are symmetric, so a 16-row tile wastes exactly
// what a swapped 16-column tile would, without a second set of loaders.
//
// Known limits (to measure on a GPU first): element-wise operand loads through the Problem (no
// 16-byte vectors, no cp.async / multi-stage pipeline), and no split-K, so a grad_weight with
// few output tiles and a long inner dimension (a conv's N * H * W) runs on few CTAs.
// The same phases run on the host in emulate_chunk (torch.ops.splitkern_emulated), for tests.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "dtype.cuh"

namespace splitkern {
namespace gemm {

constexpr int kMaxGroups = 64;  // per launch; more groups take several launches
constexpr int kThreads = 128;   // 4 warps
constexpr int kPad = 8, kPadC = 4;  // smem row padding against bank conflicts

// One group's GEMM: C is rows x cols, summed over inner; the offsets mean what the Problem says.
struct Group {
  int64_t rows, cols, inner;
  int64_t a_off, b_off, c_off;
};

// The three GEMMs of a grouped layer, per group g (k_g inputs, n_g outputs, `taps` kernel taps,
// `pixels` rows: the batch for a matmul, N * H * W positions for a conv):
//   forward      rows pixels, cols n_g,        inner k_g * taps;  a_off in, b_off weight, c_off out
//   grad_input   rows pixels, cols k_g,        inner n_g * taps;  a_off out, b_off weight, c_off in
//   grad_weight  rows n_g,    cols k_g * taps, inner pixels;      a_off out, b_off in, c_off weight
enum class Pass { kForward, kGradInput, kGradWeight };

inline std::vector<Group> pass_groups(Pass pass, const GroupOffsets& off, int64_t pixels, int64_t taps) {
  std::vector<Group> groups;
  for (int64_t g = 0; g < off.groups(); ++g) {
    const int64_t k = off.in[g + 1] - off.in[g], n = off.out[g + 1] - off.out[g];
    switch (pass) {
      case Pass::kForward: groups.push_back({pixels, n, k * taps, off.in[g], off.weight[g], off.out[g]}); break;
      case Pass::kGradInput: groups.push_back({pixels, k, n * taps, off.out[g], off.weight[g], off.in[g]}); break;
      case Pass::kGradWeight: groups.push_back({n, k * taps, pixels, off.out[g], off.in[g], off.weight[g]}); break;
    }
  }
  return groups;
}

struct GroupTable {
  Group group[kMaxGroups];
};

template <int BM_, int BN_, int WARPS_M_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, BK = 32, WARPS_M = WARPS_M_, WARPS_N = 4 / WARPS_M_;
  static constexpr int FM = BM / WARPS_M / 16, FN = BN / WARPS_N / 16;  // fragments per warp
  static_assert(WARPS_M * WARPS_N == 4 && FM >= 1 && FN >= 1, "4 warps of whole 16x16 fragments");
};
using SquareTile = Tile<64, 64, 2>;
using SmallMTile = Tile<16, 128, 1>;
constexpr int64_t kSmallRows = SmallMTile::BM;

template <typename T, typename TileT>
struct SharedTiles {
  T a[TileT::BM][TileT::BK + kPad];
  T b[TileT::BK][TileT::BN + kPad];
  float c[TileT::BM][TileT::BN + kPadC];

  // wmma needs 32-byte aligned fragment pointers and ldm a multiple of 8 (16-bit) / 4 (fp32)
  // elements; fragments start every 16 rows and columns, so these suffice:
  static_assert((TileT::BK + kPad) % 8 == 0 && (TileT::BN + kPad) % 8 == 0 && (TileT::BN + kPadC) % 4 == 0);
  static_assert(16 * (TileT::BK + kPad) * sizeof(T) % 32 == 0 && 16 * (TileT::BN + kPad) * sizeof(T) % 32 == 0 &&
                16 * (TileT::BN + kPadC) * sizeof(float) % 32 == 0 && 16 * sizeof(T) % 32 == 0);
  static_assert(sizeof(a) % 32 == 0 && sizeof(b) % 32 == 0, "b and c start 32-byte aligned");
};

// The kernel's per-thread phases (between barriers), shared with the host emulation below.

// Fill a R x C tile from load(r, c) (zero outside rows x cols); the index that is contiguous in
// global memory varies fastest across threads, so the loads coalesce.
template <int R, int C, bool COL_CONTIGUOUS, typename T, int LD, typename Load>
SPLITKERN_HD void fill_tile(int tid, T (*tile)[LD], int64_t r0, int64_t c0, int64_t rows, int64_t cols, Load load) {
  const T zero = from_float<T>(0.0f);
  for (int e = tid; e < R * C; e += kThreads) {
    const int r = COL_CONTIGUOUS ? e / C : e % R, c = COL_CONTIGUOUS ? e % C : e / R;
    tile[r][c] = (r0 + r < rows && c0 + c < cols) ? load(r0 + r, c0 + c) : zero;
  }
}

// A[m0:, k0:] and B[k0:, n0:] of group `grp` into shared memory.
template <typename T, typename TileT, typename Problem>
SPLITKERN_HD void load_tiles(int tid, SharedTiles<T, TileT>& s, const Problem& problem, const Group& grp, int64_t m0,
                             int64_t n0, int64_t k0) {
  fill_tile<TileT::BM, TileT::BK, Problem::kAContiguousInK>(
      tid, s.a, m0, k0, grp.rows, grp.inner, [&](int64_t r, int64_t kk) { return problem.a(grp, r, kk); });
  fill_tile<TileT::BK, TileT::BN, Problem::kBContiguousInN>(
      tid, s.b, k0, n0, grp.inner, grp.cols, [&](int64_t kk, int64_t j) { return problem.b(grp, kk, j); });
}

// Store the accumulated C tile (in shared memory) through the Problem's epilogue.
template <typename T, typename TileT, typename Problem>
SPLITKERN_HD void store_tile(int tid, const SharedTiles<T, TileT>& s, const Problem& problem, const Group& grp,
                             int64_t m0, int64_t n0) {
  for (int e = tid; e < TileT::BM * TileT::BN; e += kThreads) {
    const int r = e / TileT::BN, c = e % TileT::BN;
    if (m0 + r < grp.rows && n0 + c < grp.cols) problem.store(grp, m0 + r, n0 + c, s.c[r][c]);
  }
}

template <typename T, typename TileT, typename Problem>
__global__ void __launch_bounds__(kThreads, 4) grouped_gemm_kernel(Problem problem, GroupTable table) {
  using namespace nvcuda;
  constexpr int FM = TileT::FM, FN = TileT::FN, LDA = TileT::BK + kPad, LDB = TileT::BN + kPad;
  const Group grp = table.group[blockIdx.z];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * TileT::BM, n0 = static_cast<int64_t>(blockIdx.y) * TileT::BN;
  if (m0 >= grp.rows || n0 >= grp.cols) return;  // this group is smaller than the largest one

  __shared__ __align__(32) SharedTiles<T, TileT> s;
  const int warp = threadIdx.x / 32;
  const int warp_m = (warp / TileT::WARPS_N) * FM * 16, warp_n = (warp % TileT::WARPS_N) * FN * 16;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
  for (int i = 0; i < FM; ++i)
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < grp.inner; k0 += TileT::BK) {
    load_tiles(threadIdx.x, s, problem, grp, m0, n0, k0);
    __syncthreads();
    for (int kk = 0; kk < TileT::BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[FN];
      for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(fa[i], &s.a[warp_m + 16 * i][kk], LDA);
      for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(fb[j], &s.b[kk][warp_n + 16 * j], LDB);
      for (int i = 0; i < FM; ++i)
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < FM; ++i)
    for (int j = 0; j < FN; ++j)
      wmma::store_matrix_sync(&s.c[warp_m + 16 * i][warp_n + 16 * j], acc[i][j], TileT::BN + kPadC,
                              wmma::mem_row_major);
  __syncthreads();
  store_tile(threadIdx.x, s, problem, grp, m0, n0);
}

// The kernel run on the host, CTA after CTA and, between barriers, thread after thread, with a
// scalar fp32 product in place of the wmma fragments: for tests on machines without a GPU
// (torch.ops.splitkern_emulated), so the Problems, tiling and bounds run in CI.
template <typename T, typename TileT, typename Problem>
void emulate_chunk(const Problem& problem, const GroupTable& table, unsigned count, int64_t tiles_m,
                   int64_t tiles_n) {
  constexpr int BM = TileT::BM, BN = TileT::BN, BK = TileT::BK;
  auto s = std::make_unique<SharedTiles<T, TileT>>();
  for (unsigned z = 0; z < count; ++z) {
    const Group grp = table.group[z];
    for (int64_t bx = 0; bx < tiles_m; ++bx) {
      for (int64_t by = 0; by < tiles_n; ++by) {
        const int64_t m0 = bx * BM, n0 = by * BN;
        if (m0 >= grp.rows || n0 >= grp.cols) continue;
        std::vector<float> acc(BM * BN, 0.0f);
        for (int64_t k0 = 0; k0 < grp.inner; k0 += BK) {
          for (int tid = 0; tid < kThreads; ++tid) load_tiles(tid, *s, problem, grp, m0, n0, k0);
          for (int r = 0; r < BM; ++r)
            for (int c = 0; c < BN; ++c)
              for (int kk = 0; kk < BK; ++kk) acc[r * BN + c] += to_float(s->a[r][kk]) * to_float(s->b[kk][c]);
        }
        for (int r = 0; r < BM; ++r)
          for (int c = 0; c < BN; ++c) s->c[r][c] = acc[r * BN + c];
        for (int tid = 0; tid < kThreads; ++tid) store_tile(tid, *s, problem, grp, m0, n0);
      }
    }
  }
}

template <typename T, typename TileT, typename Problem>
void launch_chunk(const Problem& problem, const GroupTable& table, unsigned count, int64_t rows, int64_t cols,
                  bool on_host) {
  const int64_t tiles_m = (rows + TileT::BM - 1) / TileT::BM, tiles_n = (cols + TileT::BN - 1) / TileT::BN;
  if (on_host) return emulate_chunk<T, TileT>(problem, table, count, tiles_m, tiles_n);
  TORCH_CHECK(tiles_m <= 2147483647 && tiles_n <= 65535, "grouped GEMM too large for one launch: ", rows,
              " rows x ", cols, " columns");
  const dim3 grid(static_cast<unsigned>(tiles_m), static_cast<unsigned>(tiles_n), count);
  grouped_gemm_kernel<T, TileT, Problem><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(problem, table);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Run `problem` for all groups, on the current CUDA stream (or emulated on the host, when the
// Problem's pointers are host memory): empty groups (no rows or no columns) are dropped, the
// rest go kMaxGroups per launch, each launch with the tile shape its largest group needs.
template <typename T, typename Problem>
void launch(const Problem& problem, const std::vector<Group>& groups, bool on_host = false) {
  std::vector<Group> work;
  for (const Group& g : groups)
    if (g.rows > 0 && g.cols > 0) work.push_back(g);
  for (size_t first = 0; first < work.size(); first += kMaxGroups) {
    const size_t count = std::min<size_t>(kMaxGroups, work.size() - first);
    GroupTable table;
    int64_t rows = 0, cols = 0;
    for (size_t i = 0; i < count; ++i) {
      table.group[i] = work[first + i];
      rows = std::max(rows, work[first + i].rows);
      cols = std::max(cols, work[first + i].cols);
    }
    if (rows <= kSmallRows) launch_chunk<T, SmallMTile>(problem, table, count, rows, cols, on_host);
    else launch_chunk<T, SquareTile>(problem, table, count, rows, cols, on_host);
  }
}

// One pass's grouped GEMM in the 16-bit CUDA type T of `like` (fp16/bf16): make_problem((T*)nullptr)
// builds the Problem (the pointer only carries T), run on the GPU, or on the host for CPU tensors.
template <typename MakeProblem>
void launch_pass(const at::Tensor& like, Pass pass, const GroupOffsets& off, int64_t pixels, int64_t taps,
                 MakeProblem make_problem) {
  AT_DISPATCH_REDUCED_FLOATING_TYPES(like.scalar_type(), "splitkern_grouped_gemm", [&] {
    using T = typename CudaType<scalar_t>::type;
    launch<T>(make_problem(static_cast<T*>(nullptr)), pass_groups(pass, off, pixels, taps), !like.is_cuda());
  });
}

inline bool has_tensor_core_kernel(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// Op registration around a tensor-core entry point `Kernel` (which runs the kernel on CUDA
// tensors and its host emulation on CPU tensors), dispatching on the first tensor argument:
// ByDtype<Kernel, Fallback>::run is the CUDA impl (fp16/bf16 -> Kernel, else Fallback, an ATen
// composition with the same signature); Emulated<Kernel>::run the splitkern_emulated CPU impl.
template <auto Kernel, auto Fallback>
struct ByDtype;
template <typename... Args, at::Tensor (*Kernel)(const at::Tensor&, Args...),
          at::Tensor (*Fallback)(const at::Tensor&, Args...)>
struct ByDtype<Kernel, Fallback> {
  static at::Tensor run(const at::Tensor& first, Args... args) {
    return has_tensor_core_kernel(first) ? Kernel(first, args...) : Fallback(first, args...);
  }
};

template <auto Kernel>
struct Emulated;
template <typename... Args, at::Tensor (*Kernel)(const at::Tensor&, Args...)>
struct Emulated<Kernel> {
  static at::Tensor run(const at::Tensor& first, Args... args) {
    TORCH_CHECK(has_tensor_core_kernel(first), "splitkern_emulated runs the fp16/bf16 tensor-core kernels only, got ",
                first.scalar_type());
    return Kernel(first, args...);
  }
};

// An op's three tensor-core passes, registered under the op's kernel names (splitkern/registry.py):
// as its CUDA impls (ByDtype: the ATen composition runs the other dtypes) and as its host-emulated
// impls (splitkern_emulated, for tests).
template <auto Forward, auto ForwardAten, auto GradInput, auto GradInputAten, auto GradWeight, auto GradWeightAten>
struct Passes {
  static void register_cuda(torch::Library& m, const std::string& op) {
    m.impl(("ext_" + op).c_str(), &ByDtype<Forward, ForwardAten>::run);
    m.impl(("ext_" + op + "_grad_input").c_str(), &ByDtype<GradInput, GradInputAten>::run);
    m.impl(("ext_" + op + "_grad_weight").c_str(), &ByDtype<GradWeight, GradWeightAten>::run);
  }
  static void register_emulated(torch::Library& m, const std::string& op) {
    m.impl(op.c_str(), &Emulated<Forward>::run);
    m.impl((op + "_grad_input").c_str(), &Emulated<GradInput>::run);
    m.impl((op + "_grad_weight").c_str(), &Emulated<GradWeight>::run);
  }
};

}  // namespace gemm

// What every op's Problem (csrc/cuda/<op>.cu) is written in.
using gemm::from_float;
using gemm::Group;
using gemm::to_float;

// Registers an op's gemm::Passes under its kernel names (CUDA, and emulated on the host) and lists
// "<op>:cuda" (described by `what`) and "<op>:emulated" in kernel_info(). At namespace scope.
#define SPLITKERN_REGISTER_TENSOR_CORE_PASSES(op, passes, what)                                 \
  TORCH_LIBRARY_IMPL(splitkern, CUDA, m) { passes::register_cuda(m, #op); }                     \
  TORCH_LIBRARY_IMPL(splitkern_emulated, CPU, m) { passes::register_emulated(m, #op); }        \
  const KernelInfo op##_cuda_info(#op ":cuda", what);                                          \
  const KernelInfo op##_emulated_info(#op ":emulated", "the CUDA kernels run on the host (splitkern_emulated)")

namespace gemm {

inline const int64_t* index_ptr(const OptTensor& index) {
  return index.has_value() ? index->data_ptr<int64_t>() : nullptr;
}

}  // namespace gemm
}  // namespace splitkern
