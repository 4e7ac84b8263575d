// block_diag_mm on CUDA: fp16/bf16 forward and grad_input as ONE tensor-core grouped-GEMM
// launch per (up to kMaxGroups) groups, with the input gather and output scatter fused into
// the tile loads and the epilogue. fp32/fp64 use the per-group cuBLAS composition of
// csrc/block_diag_mm.cpp (tf32 then follows torch.backends.cuda.matmul.allow_tf32).
//
// Tiling: a CTA computes a kBM x kBN tile of one group's output with 4 warps (2 x 2), each
// warp 32 x 32 as 2 x 2 wmma 16x16x16 fragments, fp32 accumulation. Group g's tiles are
// blockIdx.z = g; blockIdx.y runs over the largest group's columns and CTAs past their own
// group's width exit at once (ragged groups cost one empty CTA each, no tile table and no
// host-to-device copy: the group offsets travel in the kernel parameters).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>

#include "../ops.h"

namespace splitkern {
namespace {

constexpr int kMaxGroups = 64;  // per launch; more groups take several launches
constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 128;
constexpr int kPadA = 8, kPadB = 8, kPadC = 4;  // smem row padding against bank conflicts

struct GroupTable {
  int64_t a_off[kMaxGroups + 1];  // inner-dimension (A column) offsets
  int64_t c_off[kMaxGroups + 1];  // output column offsets
  int64_t w_off[kMaxGroups + 1];  // packed weight block offsets
};

template <typename T> struct CudaType;
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

// Explicit conversions: torch builds with __CUDA_NO_HALF_CONVERSIONS__ (and the bf16 twin).
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// C[m, scatter(c)] = sum_kk A[m, gather(kk)] * B_g[kk, c] (+ bias[c]) for every group g, where
// B_g[kk, c] = W_g[c, kk] (forward, W_g is (n, k)) or W_g[kk, c] (grad_input: W_TRANSPOSED).
template <typename T, bool W_TRANSPOSED>
__global__ void __launch_bounds__(kThreads) grouped_mm_kernel(
    const T* __restrict__ a, int64_t a_stride_m, int64_t a_stride_k, const int64_t* __restrict__ a_index,
    const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ c, int64_t c_stride_m,
    const int64_t* __restrict__ c_index, int64_t M, GroupTable table) {
  using namespace nvcuda;
  const int g = blockIdx.z;
  const int64_t a0 = table.a_off[g], inner = table.a_off[g + 1] - a0;
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
    for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {  // A tile, gathered columns
      const int r = e / kBK, kk = e % kBK;
      const int64_t m = m0 + r, col = k0 + kk;
      T v = zero;
      if (m < M && col < inner) {
        const int64_t src = a_index ? a_index[a0 + col] : a0 + col;
        v = a[m * a_stride_m + src * a_stride_k];
      }
      a_tile[r][kk] = v;
    }
    for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {  // B tile from the packed block
      const int kk = e / kBN, cc = e % kBN;
      const int64_t row = k0 + kk, col = n0 + cc;
      T v = zero;
      if (row < inner && col < width) v = W_TRANSPOSED ? wg[row * width + col] : wg[col * inner + row];
      b_tile[kk][cc] = v;
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
  for (int e = threadIdx.x; e < kBM * kBN; e += kThreads) {  // epilogue: bias, cast, scattered store
    const int r = e / kBN, cc = e % kBN;
    const int64_t m = m0 + r, col = n0 + cc;
    if (m >= M || col >= width) continue;
    float v = c_tile[r][cc];
    if (bias) v += to_float(bias[c0 + col]);
    const int64_t dst = c_index ? c_index[c0 + col] : c0 + col;
    c[m * c_stride_m + dst] = from_float<T>(v);
  }
}

const int64_t* index_ptr(const OptTensor& index) {
  return index.has_value() ? index->data_ptr<int64_t>() : nullptr;
}

// c (M, sum of c sizes) = grouped A @ B for groups [first, first + count) of the offsets.
template <typename scalar_t, bool W_TRANSPOSED>
void launch(const Tensor& a, const Tensor& weight, const OptTensor& bias, Tensor& c, const GroupOffsets& off,
            const std::vector<int64_t>& a_off, const std::vector<int64_t>& c_off, const OptTensor& a_index,
            const OptTensor& c_index) {
  using T = typename CudaType<scalar_t>::type;
  const int64_t M = a.size(0);
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t first = 0; first < off.groups(); first += kMaxGroups) {
    const int64_t count = std::min<int64_t>(kMaxGroups, off.groups() - first);
    GroupTable table;
    int64_t widest = 0;
    for (int64_t i = 0; i <= count; ++i) {
      table.a_off[i] = a_off[first + i];
      table.c_off[i] = c_off[first + i];
      table.w_off[i] = off.weight[first + i];
      if (i < count) widest = std::max(widest, c_off[first + i + 1] - c_off[first + i]);
    }
    if (M == 0 || widest == 0) continue;
    const dim3 grid((M + kBM - 1) / kBM, (widest + kBN - 1) / kBN, count);
    TORCH_CHECK(grid.x <= 2147483647u && grid.y <= 65535u, "block_diag_mm: shape too large for one launch");
    grouped_mm_kernel<T, W_TRANSPOSED><<<grid, kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(a.data_ptr<scalar_t>()), a.stride(0), a.stride(1), index_ptr(a_index),
        reinterpret_cast<const T*>(weight.data_ptr<scalar_t>()),
        bias.has_value() ? reinterpret_cast<const T*>(bias->data_ptr<scalar_t>()) : nullptr,
        reinterpret_cast<T*>(c.data_ptr<scalar_t>()), c.stride(0), index_ptr(c_index), M, table);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

bool has_tensor_core_kernel(const Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

void check_cuda_operands(const Tensor& a, const char* a_name, int64_t cols, const Tensor& weight,
                         const GroupOffsets& off) {
  TORCH_CHECK(a.dim() == 2 && a.size(1) == cols, a_name, " must have shape (M, ", cols, "), got ", a.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.numel() == off.weight.back(), "weight must have shape (",
              off.weight.back(), ",), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == a.scalar_type(), "weight has dtype ", weight.scalar_type(), " but ",
              a_name, " has ", a.scalar_type());
}

Tensor block_diag_mm_cuda(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                          IntArrayRef out_sizes, const OptTensor& in_index, const OptTensor& out_index) {
  if (!has_tensor_core_kernel(x))
    return block_diag_mm_aten(x, weight, bias, in_sizes, out_sizes, in_index, out_index);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto off = group_offsets(in_sizes, out_sizes, 1);
  check_cuda_operands(x, "x", off.in.back(), weight, off);
  const Tensor w = weight.contiguous();
  const OptTensor b = bias.has_value() ? OptTensor(bias->contiguous()) : std::nullopt;
  Tensor y = at::empty({x.size(0), off.out.back()}, x.options());
  AT_DISPATCH_SWITCH(x.scalar_type(), "block_diag_mm_cuda",
                     AT_DISPATCH_CASE(at::kHalf, [&] { launch<scalar_t, false>(x, w, b, y, off, off.in, off.out, in_index, out_index); })
                     AT_DISPATCH_CASE(at::kBFloat16, [&] { launch<scalar_t, false>(x, w, b, y, off, off.in, off.out, in_index, out_index); }));
  return y;
}

Tensor block_diag_mm_grad_input_cuda(const Tensor& grad_out, const Tensor& weight, IntArrayRef in_sizes,
                                     IntArrayRef out_sizes, const OptTensor& in_index,
                                     const OptTensor& out_index) {
  if (!has_tensor_core_kernel(grad_out))
    return block_diag_mm_grad_input_aten(grad_out, weight, in_sizes, out_sizes, in_index, out_index);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const auto off = group_offsets(in_sizes, out_sizes, 1);
  check_cuda_operands(grad_out, "grad_out", off.out.back(), weight, off);
  const Tensor w = weight.contiguous();
  Tensor dx = at::empty({grad_out.size(0), off.in.back()}, grad_out.options());
  AT_DISPATCH_SWITCH(grad_out.scalar_type(), "block_diag_mm_grad_input_cuda",
                     AT_DISPATCH_CASE(at::kHalf, [&] { launch<scalar_t, true>(grad_out, w, std::nullopt, dx, off, off.out, off.in, out_index, in_index); })
                     AT_DISPATCH_CASE(at::kBFloat16, [&] { launch<scalar_t, true>(grad_out, w, std::nullopt, dx, off, off.out, off.in, out_index, in_index); }));
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(splitkern, CUDA, m) {
  m.impl("ext_block_diag_mm", &block_diag_mm_cuda);
  m.impl("ext_block_diag_mm_grad_input", &block_diag_mm_grad_input_cuda);
}

}  // namespace splitkern
