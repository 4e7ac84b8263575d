// grouped_conv on CUDA: for fp16/bf16, the forward, grad_input and grad_weight are each ONE
// implicit-GEMM tensor-core launch (per 64 groups; grouped_gemm.cuh) reading the activations
// straight from memory (NCHW or channels_last, any strides; padding by bounds checks), with
// the channel gathers fused into those reads and bias + channel scatter into the epilogue:
//   forward     rows = output pixels (n, ho, wo), cols = n_g, inner = (c, tap)   [k_g * kh * kw]
//   grad_input  rows = input pixels (n, h, w),    cols = k_g, inner = (j, tap)   [n_g * kh * kw]
//   grad_weight rows = n_g, cols = (c, tap),      inner = output pixels (n, ho, wo)
// grad_input reads dY at the output position each tap maps (h, w) to, zero where there is none:
// with stride s, (s^2 - 1)/s^2 of its products are zeros (simple, not optimal for strided convs).
// fp32/fp64 use cuDNN (csrc/grouped_conv.cpp).
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include "grouped_gemm.cuh"

namespace splitkern {
namespace {

// An (N, C, H, W) tensor with any strides; channel c is read at index[c] when an index is given.
template <typename T>
struct Image {
  T* data;
  int64_t stride[4];
  int64_t H, W;
  const int64_t* index;

  SPLITKERN_HD T& at(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return data[n * stride[0] + (index ? index[c] : c) * stride[1] + h * stride[2] + w * stride[3]];
  }
  SPLITKERN_HD bool inside(int64_t h, int64_t w) const { return h >= 0 && h < H && w >= 0 && w < W; }
};

template <typename T>
Image<T> image(const Tensor& t, const OptTensor& index) {
  return {reinterpret_cast<T*>(t.data_ptr()), {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}, t.size(2),
          t.size(3), gemm::index_ptr(index)};
}

struct Pixel {
  int64_t n, h, w;
};

// Row m of an (N, H, W) pixel enumeration.
SPLITKERN_HD Pixel pixel(int64_t m, int64_t H, int64_t W) { return {m / (H * W), (m / W) % H, m % W}; }

// The kernel window: which input position tap t of an output position reads, and back.
struct Window {
  int64_t kw, taps, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;

  SPLITKERN_HD int64_t input_h(int64_t ho, int64_t t) const { return ho * stride_h - pad_h + (t / kw) * dil_h; }
  SPLITKERN_HD int64_t input_w(int64_t wo, int64_t t) const { return wo * stride_w - pad_w + (t % kw) * dil_w; }
  // The output position whose tap t reads input (h, w); false when the stride skips it.
  SPLITKERN_HD bool output_of(int64_t h, int64_t w, int64_t t, int64_t& ho, int64_t& wo) const {
    const int64_t dh = h + pad_h - (t / kw) * dil_h, dw = w + pad_w - (t % kw) * dil_w;
    if (dh < 0 || dw < 0 || dh % stride_h != 0 || dw % stride_w != 0) return false;
    ho = dh / stride_h;
    wo = dw / stride_w;
    return true;
  }
};

template <typename T>
SPLITKERN_HD T zero() {
  return from_float<T>(0.0f);
}

// y[n, c_off + j, ho, wo] = sum_(c, t) x[n, a_off + c, input(ho, wo, t)] W_g[j, c, t] (+ bias).
template <typename T>
struct ForwardProblem {
  Image<const T> x;
  const T* w;
  const T* bias;
  Image<T> y;
  Window win;
  static constexpr bool kAContiguousInK = false, kBContiguousInN = false;  // rows: neighbouring pixels

  SPLITKERN_HD T a(const Group& g, int64_t m, int64_t kk) const {
    const Pixel p = pixel(m, y.H, y.W);
    const int64_t t = kk % win.taps, h = win.input_h(p.h, t), w_ = win.input_w(p.w, t);
    return x.inside(h, w_) ? x.at(p.n, g.a_off + kk / win.taps, h, w_) : zero<T>();
  }
  SPLITKERN_HD T b(const Group& g, int64_t kk, int64_t j) const { return w[g.b_off + j * g.inner + kk]; }
  SPLITKERN_HD void store(const Group& g, int64_t m, int64_t j, float v) const {
    if (bias) v += to_float(bias[g.c_off + j]);
    const Pixel p = pixel(m, y.H, y.W);
    y.at(p.n, g.c_off + j, p.h, p.w) = from_float<T>(v);
  }
};

// dx[n, c_off + c, h, w] = sum_(j, t) dy[n, a_off + j, output(h, w, t)] W_g[j, c, t].
template <typename T>
struct GradInputProblem {
  Image<const T> dy;
  const T* w;
  Image<T> dx;
  Window win;
  static constexpr bool kAContiguousInK = false, kBContiguousInN = false;

  SPLITKERN_HD T a(const Group& g, int64_t m, int64_t kk) const {
    const Pixel p = pixel(m, dx.H, dx.W);
    int64_t ho, wo;
    if (!win.output_of(p.h, p.w, kk % win.taps, ho, wo) || !dy.inside(ho, wo)) return zero<T>();
    return dy.at(p.n, g.a_off + kk / win.taps, ho, wo);
  }
  SPLITKERN_HD T b(const Group& g, int64_t kk, int64_t c) const {
    const int64_t j = kk / win.taps, t = kk % win.taps;
    return w[g.b_off + (j * g.cols + c) * win.taps + t];
  }
  SPLITKERN_HD void store(const Group& g, int64_t m, int64_t c, float v) const {
    const Pixel p = pixel(m, dx.H, dx.W);
    dx.at(p.n, g.c_off + c, p.h, p.w) = from_float<T>(v);
  }
};

// dW_g[j, (c, t)] = sum_(n, ho, wo) dy[n, a_off + j, ho, wo] x[n, b_off + c, input(ho, wo, t)], packed at c_off.
template <typename T>
struct GradWeightProblem {
  Image<const T> dy, x;
  T* grad_w;
  Window win;
  static constexpr bool kAContiguousInK = true, kBContiguousInN = false;

  SPLITKERN_HD T a(const Group& g, int64_t j, int64_t m) const {
    const Pixel p = pixel(m, dy.H, dy.W);
    return dy.at(p.n, g.a_off + j, p.h, p.w);
  }
  SPLITKERN_HD T b(const Group& g, int64_t m, int64_t col) const {
    const Pixel p = pixel(m, dy.H, dy.W);
    const int64_t t = col % win.taps, h = win.input_h(p.h, t), w_ = win.input_w(p.w, t);
    return x.inside(h, w_) ? x.at(p.n, g.b_off + col / win.taps, h, w_) : zero<T>();
  }
  SPLITKERN_HD void store(const Group& g, int64_t j, int64_t col, float v) const {
    grad_w[g.c_off + j * g.cols + col] = from_float<T>(v);
  }
};

Window window(const ConvGeometry& geo) {
  return {geo.kernel[1], geo.taps(), geo.stride[0], geo.stride[1], geo.padding[0], geo.padding[1],
          geo.dilation[0], geo.dilation[1]};
}

// The tensor-core entry points (fp16/bf16; CPU tensors run the host emulation).

Tensor forward(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
               IntArrayRef out_sizes, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
               IntArrayRef dilation, const OptTensor& in_index, const OptTensor& out_index) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const auto [geo, off] = checked_conv(x, weight, in_sizes, out_sizes, kernel_size, stride, padding, dilation);
  check_bias_and_indices(bias, in_index, out_index, off.in.back(), off.out.back(), weight);
  const int64_t ho = geo.out_size(x.size(2), 0), wo = geo.out_size(x.size(3), 1), pixels = x.size(0) * ho * wo;
  const Tensor w = weight.contiguous();
  const OptTensor b = bias.has_value() ? OptTensor(bias->contiguous()) : std::nullopt;
  Tensor y = at::empty({x.size(0), off.out.back(), ho, wo}, x.options().memory_format(x.suggest_memory_format()));
  gemm::launch_pass(x, gemm::Pass::kForward, off, pixels, geo.taps(), [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    return ForwardProblem<T>{image<const T>(x, in_index), reinterpret_cast<const T*>(w.data_ptr()),
                             b.has_value() ? reinterpret_cast<const T*>(b->data_ptr()) : nullptr,
                             image<T>(y, out_index), window(geo)};
  });
  return y;
}

Tensor grad_input(const Tensor& grad_out, const Tensor& weight, const Tensor& x, IntArrayRef in_sizes,
                  IntArrayRef out_sizes, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                  IntArrayRef dilation, const OptTensor& in_index, const OptTensor& out_index) {
  const at::OptionalDeviceGuard guard(at::device_of(grad_out));
  const auto [geo, off] = checked_conv_backward(grad_out, x, weight, in_sizes, out_sizes, kernel_size, stride, padding,
                                           dilation, in_index, out_index);
  const int64_t pixels = x.size(0) * x.size(2) * x.size(3);
  const Tensor w = weight.contiguous();
  Tensor dx = at::empty(x.sizes(), grad_out.options().memory_format(x.suggest_memory_format()));
  gemm::launch_pass(grad_out, gemm::Pass::kGradInput, off, pixels, geo.taps(), [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    return GradInputProblem<T>{image<const T>(grad_out, out_index), reinterpret_cast<const T*>(w.data_ptr()),
                               image<T>(dx, in_index), window(geo)};
  });
  return dx;
}

Tensor grad_weight(const Tensor& grad_out, const Tensor& x, const Tensor& weight, IntArrayRef in_sizes,
                   IntArrayRef out_sizes, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                   IntArrayRef dilation, const OptTensor& in_index, const OptTensor& out_index) {
  const at::OptionalDeviceGuard guard(at::device_of(grad_out));
  const auto [geo, off] = checked_conv_backward(grad_out, x, weight, in_sizes, out_sizes, kernel_size, stride, padding,
                                           dilation, in_index, out_index);
  const int64_t pixels = grad_out.size(0) * grad_out.size(2) * grad_out.size(3);
  Tensor grad_w = at::empty({off.weight.back()}, x.options());
  gemm::launch_pass(x, gemm::Pass::kGradWeight, off, pixels, geo.taps(), [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    return GradWeightProblem<T>{image<const T>(grad_out, out_index), image<const T>(x, in_index),
                                reinterpret_cast<T*>(grad_w.data_ptr()), window(geo)};
  });
  return grad_w;
}

}  // namespace

using GroupedConvPasses = gemm::Passes<&forward, &grouped_conv_aten, &grad_input, &grouped_conv_grad_input_aten,
                                        &grad_weight, &grouped_conv_grad_weight_aten>;
SPLITKERN_REGISTER_TENSOR_CORE_PASSES(
    grouped_conv, GroupedConvPasses,
    "CUDA: fp16/bf16 forward, grad_input and grad_weight each one implicit-GEMM tensor-core (wmma) launch with fused "
    "channel gather/scatter; fp32/fp64 one cuDNN call per group (groups=G when equal)");

}  // namespace splitkern
