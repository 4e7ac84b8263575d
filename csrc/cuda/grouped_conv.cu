// grouped_conv forward on CUDA: fp16/bf16 as ONE implicit-GEMM tensor-core launch (per 64
// groups; grouped_gemm.cuh): rows are output pixels (n, ho, wo), the inner dimension is
// (input channel, kernel row, kernel column) read straight from x (NCHW or channels_last, any
// strides; zero padding by bounds checks), with the channel gather fused into those reads and
// bias + channel scatter into the epilogue. fp32/fp64 and the backward passes use cuDNN
// (csrc/grouped_conv.cpp).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "grouped_gemm.cuh"

namespace splitkern {
namespace {

using gemm::from_float;
using gemm::to_float;

template <typename T>
struct ConvProblem {
  const T* x;
  int64_t x_stride[4];  // n, c, h, w
  int64_t H, W;
  const int64_t* x_index;
  const T* bias;
  T* y;
  int64_t y_stride[4];
  int64_t Ho, Wo;
  const int64_t* y_index;
  int64_t kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t M;      // N * Ho * Wo
  int64_t taps;   // kh * kw

  __device__ __forceinline__ T a(int64_t m, int64_t kk, int64_t a0) const {
    const int64_t wo = m % Wo, ho = (m / Wo) % Ho, n = m / (Wo * Ho);
    const int64_t c = kk / taps, t = kk % taps;
    const int64_t h = ho * stride_h - pad_h + (t / kw) * dil_h, w = wo * stride_w - pad_w + (t % kw) * dil_w;
    if (h < 0 || h >= H || w < 0 || w >= W) return from_float<T>(0.0f);
    const int64_t channel = x_index ? x_index[a0 + c] : a0 + c;
    return x[n * x_stride[0] + channel * x_stride[1] + h * x_stride[2] + w * x_stride[3]];
  }
  __device__ __forceinline__ T b(const T* wg, int64_t kk, int64_t j, int64_t inner, int64_t) const {
    return wg[j * inner + kk];
  }
  __device__ __forceinline__ void store(int64_t m, int64_t j, int64_t c0, float v) const {
    if (bias) v += to_float(bias[c0 + j]);
    const int64_t wo = m % Wo, ho = (m / Wo) % Ho, n = m / (Wo * Ho);
    const int64_t channel = y_index ? y_index[c0 + j] : c0 + j;
    y[n * y_stride[0] + channel * y_stride[1] + ho * y_stride[2] + wo * y_stride[3]] = from_float<T>(v);
  }
};

Tensor grouped_conv_cuda(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                         IntArrayRef out_sizes, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                         IntArrayRef dilation, const OptTensor& in_index, const OptTensor& out_index) {
  if (!gemm::has_tensor_core_kernel(x))
    return grouped_conv_aten(x, weight, bias, in_sizes, out_sizes, kernel_size, stride, padding, dilation, in_index,
                             out_index);
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "kernel_size, stride, padding and dilation must have 2 entries each");
  const int64_t taps = kernel_size[0] * kernel_size[1];
  const auto off = group_offsets(in_sizes, out_sizes, taps);
  TORCH_CHECK(x.dim() == 4 && x.size(1) == off.in.back(), "x must have shape (N, ", off.in.back(),
              ", H, W), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.numel() == off.weight.back(), "weight must have shape (",
              off.weight.back(), ",), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight has dtype ", weight.scalar_type(), " but x has ",
              x.scalar_type());
  const int64_t ho = (x.size(2) + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) / stride[0] + 1;
  const int64_t wo = (x.size(3) + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(ho > 0 && wo > 0, "x's spatial size ", x.sizes().slice(2), " is smaller than the dilated kernel");
  const Tensor w = weight.contiguous();
  const OptTensor b = bias.has_value() ? OptTensor(bias->contiguous()) : std::nullopt;
  Tensor y = at::empty({x.size(0), off.out.back(), ho, wo}, x.options().memory_format(x.suggest_memory_format()));
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "splitkern_grouped_conv_cuda", [&] {
    using T = typename gemm::CudaType<scalar_t>::type;
    const ConvProblem<T> problem{
        reinterpret_cast<const T*>(x.data_ptr<scalar_t>()), {x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
        x.size(2), x.size(3), gemm::index_ptr(in_index),
        b.has_value() ? reinterpret_cast<const T*>(b->data_ptr<scalar_t>()) : nullptr,
        reinterpret_cast<T*>(y.data_ptr<scalar_t>()), {y.stride(0), y.stride(1), y.stride(2), y.stride(3)}, ho, wo,
        gemm::index_ptr(out_index), kernel_size[1], stride[0], stride[1], padding[0], padding[1], dilation[0],
        dilation[1], x.size(0) * ho * wo, taps};
    gemm::launch<T>(problem, reinterpret_cast<const T*>(w.data_ptr<scalar_t>()), off.in, off.out, off.weight);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(splitkern, CUDA, m) { m.impl("ext_grouped_conv", &grouped_conv_cuda); }

}  // namespace splitkern
