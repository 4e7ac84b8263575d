// grouped_conv on CPU and CUDA: one ATen convolution per group on channel slices (on CUDA
// one cuDNN call with groups=G when the groups are equal), gather/scatter of channels by
// index_select/index_copy. The output keeps x's memory format.
#include <torch/library.h>

#include "ops.h"

namespace splitkern {
namespace {

ConvGeometry conv_geometry(IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  for (auto arg : {std::make_pair("kernel_size", kernel_size), std::make_pair("stride", stride),
                   std::make_pair("padding", padding), std::make_pair("dilation", dilation)}) {
    TORCH_CHECK(arg.second.size() == 2, arg.first, " must have 2 entries, got ", arg.second.size());
  }
  return {kernel_size.vec(), stride.vec(), padding.vec(), dilation.vec()};
}

}  // namespace

int64_t ConvGeometry::out_size(int64_t size, int dim) const {
  return (size + 2 * padding[dim] - dilation[dim] * (kernel[dim] - 1) - 1) / stride[dim] + 1;
}

std::pair<ConvGeometry, GroupOffsets> checked_conv(const Tensor& x, const Tensor& weight, IntArrayRef in_sizes,
                                                   IntArrayRef out_sizes, IntArrayRef kernel_size,
                                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  auto geo = conv_geometry(kernel_size, stride, padding, dilation);
  auto off = group_offsets(in_sizes, out_sizes, geo.taps());
  TORCH_CHECK(x.dim() == 4 && x.size(1) == off.in.back(), "x must have shape (N, ", off.in.back(),
              ", H, W) (sum of in_sizes), got ", x.sizes());
  check_weight(weight, off);
  check_like_weight(weight, x, "x");
  TORCH_CHECK(geo.out_size(x.size(2), 0) > 0 && geo.out_size(x.size(3), 1) > 0, "x's spatial size ",
              x.sizes().slice(2), " is smaller than the dilated kernel");
  return {std::move(geo), std::move(off)};
}

std::pair<ConvGeometry, GroupOffsets> checked_conv_backward(const Tensor& grad_out, const Tensor& x,
                                                            const Tensor& weight, IntArrayRef in_sizes,
                                                            IntArrayRef out_sizes, IntArrayRef kernel_size,
                                                            IntArrayRef stride, IntArrayRef padding,
                                                            IntArrayRef dilation, const OptTensor& in_index,
                                                            const OptTensor& out_index) {
  auto checked = checked_conv(x, weight, in_sizes, out_sizes, kernel_size, stride, padding, dilation);
  const auto& [geo, off] = checked;
  const std::vector<int64_t> want = {x.size(0), off.out.back(), geo.out_size(x.size(2), 0),
                                     geo.out_size(x.size(3), 1)};
  TORCH_CHECK(grad_out.sizes() == IntArrayRef(want), "grad_out must have shape ", IntArrayRef(want), ", got ",
              grad_out.sizes());
  check_like_weight(weight, grad_out, "grad_out");
  check_bias_and_indices(std::nullopt, in_index, out_index, off.in.back(), off.out.back(), weight);
  return checked;
}

namespace {

Tensor block(const Tensor& weight, const GroupOffsets& off, const ConvGeometry& geo, int64_t g) {
  const int64_t k = off.in[g + 1] - off.in[g], n = off.out[g + 1] - off.out[g];
  return weight.narrow(0, off.weight[g], n * k * geo.taps()).view({n, k, geo.kernel[0], geo.kernel[1]});
}

// One cuDNN call with groups=G beats G calls on CUDA; on CPU oneDNN's grouped conv is
// slower than the per-group loop at SplitNet's channel counts (benchmarks/results).
bool use_grouped_call(const Tensor& x, const GroupOffsets& off) {
  return x.is_cuda() && off.equal() && x.size(0) > 0;
}

// Per-group aten::convolution_backward for the parts in mask ({input, weight}).
std::pair<Tensor, Tensor> conv_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                        const GroupOffsets& off, const ConvGeometry& geo, const OptTensor& in_index,
                                        const OptTensor& out_index, bool want_input) {
  const Tensor dyg = gather_dim1(grad_out, out_index), xg = gather_dim1(x, in_index);
  const std::array<bool, 3> mask = {want_input, !want_input, false};
  const std::vector<int64_t> no_output_padding = {0, 0};
  if (use_grouped_call(x, off)) {
    const int64_t G = off.groups();
    const Tensor w = weight.view({G * off.out[1], off.in[1], geo.kernel[0], geo.kernel[1]});
    auto grads = at::convolution_backward(dyg, xg, w, std::nullopt, geo.stride, geo.padding, geo.dilation, false,
                                          no_output_padding, G, mask);
    return {std::get<0>(grads), want_input ? Tensor() : std::get<1>(grads).reshape({-1})};
  }
  std::vector<Tensor> pieces;
  for (int64_t g = 0; g < off.groups(); ++g) {
    const int64_t k = off.in[g + 1] - off.in[g], n = off.out[g + 1] - off.out[g];
    const Tensor xk = xg.narrow(1, off.in[g], k), wg = block(weight, off, geo, g);
    if (n == 0 || k == 0 || x.size(0) == 0) {  // an empty group or batch contributes nothing
      pieces.push_back(want_input ? at::zeros_like(xk) : at::zeros({wg.numel()}, weight.options()));
      continue;
    }
    auto grads = at::convolution_backward(dyg.narrow(1, off.out[g], n), xk, wg, std::nullopt, geo.stride,
                                          geo.padding, geo.dilation, false, no_output_padding, 1, mask);
    pieces.push_back(want_input ? std::get<0>(grads) : std::get<1>(grads).reshape({-1}));
  }
  return {want_input ? at::cat(pieces, 1) : Tensor(), want_input ? Tensor() : at::cat(pieces)};
}

}  // namespace

Tensor grouped_conv_aten(const Tensor& x, const Tensor& weight, const OptTensor& bias, IntArrayRef in_sizes,
                         IntArrayRef out_sizes, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                         IntArrayRef dilation, const OptTensor& in_index, const OptTensor& out_index) {
  const auto [geo, off] = checked_conv(x, weight, in_sizes, out_sizes, kernel_size, stride, padding, dilation);
  check_bias_and_indices(bias, in_index, out_index, off.in.back(), off.out.back(), weight);
  const auto format = x.suggest_memory_format();
  const Tensor xg = gather_dim1(x, in_index);
  if (use_grouped_call(x, off)) {
    const int64_t G = off.groups();
    const Tensor w = weight.view({G * off.out[1], off.in[1], geo.kernel[0], geo.kernel[1]});
    const Tensor y = at::conv2d(xg, w, bias, geo.stride, geo.padding, geo.dilation, G);
    return scatter_dim1(y, out_index).contiguous(format);
  }
  const int64_t ho = geo.out_size(x.size(2), 0), wo = geo.out_size(x.size(3), 1);
  Tensor y = at::empty({x.size(0), off.out.back(), ho, wo}, x.options().memory_format(format));
  for (int64_t g = 0; g < off.groups(); ++g) {
    const int64_t k = off.in[g + 1] - off.in[g], n = off.out[g + 1] - off.out[g];
    if (n == 0) continue;
    Tensor yg = y.narrow(1, off.out[g], n);
    const OptTensor bg = bias.has_value() ? OptTensor(bias->narrow(0, off.out[g], n)) : std::nullopt;
    if (k == 0 || x.size(0) == 0) {  // no input channels: the bias alone (aten rejects empty channels)
      if (bg.has_value()) yg.copy_(bg->view({1, n, 1, 1}).expand_as(yg));
      else yg.zero_();
      continue;
    }
    yg.copy_(at::conv2d(xg.narrow(1, off.in[g], k), block(weight, off, geo, g), bg, geo.stride, geo.padding,
                        geo.dilation));
  }
  return scatter_dim1(y, out_index).contiguous(format);
}

Tensor grouped_conv_grad_input_aten(const Tensor& grad_out, const Tensor& weight, const Tensor& x,
                                    IntArrayRef in_sizes, IntArrayRef out_sizes, IntArrayRef kernel_size,
                                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                    const OptTensor& in_index, const OptTensor& out_index) {
  const auto [geo, off] = checked_conv_backward(grad_out, x, weight, in_sizes, out_sizes, kernel_size, stride,
                                                padding, dilation, in_index, out_index);
  const Tensor dx = conv_backward(grad_out, x, weight, off, geo, in_index, out_index, true).first;
  return scatter_dim1(dx, in_index).contiguous(x.suggest_memory_format());
}

Tensor grouped_conv_grad_weight_aten(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                     IntArrayRef in_sizes, IntArrayRef out_sizes, IntArrayRef kernel_size,
                                     IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                     const OptTensor& in_index, const OptTensor& out_index) {
  const auto [geo, off] = checked_conv_backward(grad_out, x, weight, in_sizes, out_sizes, kernel_size, stride,
                                                padding, dilation, in_index, out_index);
  return conv_backward(grad_out, x, weight, off, geo, in_index, out_index, false).second;
}

TORCH_LIBRARY_IMPL(splitkern, CPU, m) {
  m.impl("ext_grouped_conv", &grouped_conv_aten);
  m.impl("ext_grouped_conv_grad_input", &grouped_conv_grad_input_aten);
  m.impl("ext_grouped_conv_grad_weight", &grouped_conv_grad_weight_aten);
}

// The CUDA impls are in csrc/cuda/grouped_conv.cu (calling these for fp32/fp64).

const KernelInfo cpu_info("grouped_conv:cpu", "C++: one ATen conv per group");

}  // namespace splitkern
