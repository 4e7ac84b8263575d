// grouped_conv forward on CUDA: fp16/bf16 as ONE implicit-GEMM tensor-core launch (per 64
// groups; grouped_gemm.cuh): rows are output pixels (n, ho, wo), the inner dimension is
// (input channel, kernel row, kernel column) read straight from x (NCHW or channels_last, any
// strides; zero padding by bounds checks), with the channel gather fused into those reads and
// bias + channel scatter into the epilogue. fp32/fp64 and the backward passes use cuDNN
// (csrc/grouped_conv.cpp).
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include "grouped_gemm.cuh"

namespace splitkern {
namespace {

using gemm::from_float;
using gemm::Group;
using gemm::to_float;

// Row m = output pixel (n, ho, wo); inner index kk = (channel c, tap t); group g's channels start
// at a_off (x), its packed (n_g, k_g, kh, kw) block at b_off, its output channels at c_off.
template <typename T>
struct ConvProblem {
  const T* x;
  int64_t x_stride[4];  // n, c, h, w
  int64_t H, W;
  const int64_t* x_index;
  const T* w;
  const T* bias;
  T* y;
  int64_t y_stride[4];
  int64_t Ho, Wo;
  const int64_t* y_index;
  int64_t kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t taps;  // kh * kw
  // consecutive rows are neighbouring output pixels (contiguous along w in NCHW)
  static constexpr bool kAContiguousInK = false, kBContiguousInN = false;

  SPLITKERN_HD T a(const Group& g, int64_t m, int64_t kk) const {
    const int64_t wo = m % Wo, ho = (m / Wo) % Ho, n = m / (Wo * Ho);
    const int64_t c = kk / taps, t = kk % taps;
    const int64_t h = ho * stride_h - pad_h + (t / kw) * dil_h, w_ = wo * stride_w - pad_w + (t % kw) * dil_w;
    if (h < 0 || h >= H || w_ < 0 || w_ >= W) return from_float<T>(0.0f);
    const int64_t channel = x_index ? x_index[g.a_off + c] : g.a_off + c;
    return x[n * x_stride[0] + channel * x_stride[1] + h * x_stride[2] + w_ * x_stride[3]];
  }
  SPLITKERN_HD T b(const Group& g, int64_t kk, int64_t j) const {
    return w[g.b_off + j * g.inner + kk];
  }
  SPLITKERN_HD void store(const Group& g, int64_t m, int64_t j, float v) const {
    if (bias) v += to_float(bias[g.c_off + j]);
    const int64_t wo = m % Wo, ho = (m / Wo) % Ho, n = m / (Wo * Ho);
    const int64_t channel = y_index ? y_index[g.c_off + j] : g.c_off + j;
    y[n * y_stride[0] + channel * y_stride[1] + ho * y_stride[2] + wo * y_stride[3]] = from_float<T>(v);
  }
};

// The tensor-core entry point (fp16/bf16; CPU tensors run the host emulation).
Tensor forward(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
               IntArrayRef out_sizes, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
               IntArrayRef dilation, const OptTensor& in_index, const OptTensor& out_index) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const auto [geo, off] = checked_conv(x, weight, in_sizes, out_sizes, kernel_size, stride, padding, dilation);
  check_same_dtype(weight, x, "x");
  const int64_t ho = geo.out_size(x.size(2), 0), wo = geo.out_size(x.size(3), 1), rows = x.size(0) * ho * wo;
  std::vector<Group> groups;
  for (int64_t g = 0; g < off.groups(); ++g)
    groups.push_back({rows, off.out[g + 1] - off.out[g], (off.in[g + 1] - off.in[g]) * geo.taps(), off.in[g],
                      off.weight[g], off.out[g]});
  const Tensor w = weight.contiguous();
  const OptTensor b = bias.has_value() ? OptTensor(bias->contiguous()) : std::nullopt;
  Tensor y = at::empty({x.size(0), off.out.back(), ho, wo}, x.options().memory_format(x.suggest_memory_format()));
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "splitkern_grouped_conv_cuda", [&] {
    using T = typename gemm::CudaType<scalar_t>::type;
    const ConvProblem<T> problem{
        reinterpret_cast<const T*>(x.data_ptr()), {x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
        x.size(2), x.size(3), gemm::index_ptr(in_index), reinterpret_cast<const T*>(w.data_ptr()),
        b.has_value() ? reinterpret_cast<const T*>(b->data_ptr()) : nullptr, reinterpret_cast<T*>(y.data_ptr()),
        {y.stride(0), y.stride(1), y.stride(2), y.stride(3)}, ho, wo, gemm::index_ptr(out_index), geo.kernel[1],
        geo.stride[0], geo.stride[1], geo.padding[0], geo.padding[1], geo.dilation[0], geo.dilation[1],
        geo.taps()};
    gemm::launch<T>(problem, groups, !x.is_cuda());
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(splitkern, CUDA, m) {
  m.impl("ext_grouped_conv", &gemm::ByDtype<&forward, &grouped_conv_aten>::run);
}

TORCH_LIBRARY_IMPL(splitkern_emulated, CPU, m) { m.impl("grouped_conv", &gemm::Emulated<&forward>::run); }

}  // namespace splitkern
