// The two GEMMs of SplitNet's group weight regulariser on CPU (ATen GEMMs; the fused CUDA
// kernel is csrc/cuda/group_weight_reg.cu, which calls these for fp64):
// a = (Q∘Q) M and b = (P∘P) M^T with M = W^2 (conv: the mean of W^2 over the kernel),
// and their backward. Accumulates in fp32 (fp64 kept), like splitkern/reference.
#include <torch/library.h>

#include <tuple>

#include "ops.h"

namespace splitkern {
namespace {

Tensor acc(const Tensor& t) { return t.scalar_type() == at::kDouble ? t : t.to(at::kFloat); }

int64_t taps(const Tensor& weight) {
  int64_t n = 1;
  for (int64_t d = 2; d < weight.dim(); ++d) n *= weight.size(d);
  return n;
}

Tensor energy(const Tensor& weight) {
  const Tensor w2 = acc(weight).square();
  return weight.dim() == 2 ? w2 : w2.flatten(2).mean(2);
}

}  // namespace

std::tuple<Tensor, Tensor> group_weight_reg_gemms_aten(const Tensor& weight, const Tensor& p, const Tensor& q) {
  check_reg(weight, p, q);
  const Tensor m = energy(weight);
  return {at::mm(acc(q).square(), m), at::mm(acc(p).square(), m.t())};
}

std::tuple<Tensor, Tensor, Tensor> group_weight_reg_gemms_backward_aten(const Tensor& weight, const Tensor& p,
                                                                         const Tensor& q, const Tensor& grad_a,
                                                                         const Tensor& grad_b) {
  check_reg_backward(weight, p, q, grad_a, grad_b);
  const Tensor m = energy(weight), pa = acc(p), qa = acc(q);
  Tensor grad_m = at::mm(qa.square().t(), grad_a) + at::mm(grad_b.t(), pa.square());
  std::vector<int64_t> shape = grad_m.sizes().vec();
  shape.resize(weight.dim(), 1);
  const Tensor grad_w = grad_m.view(shape) * acc(weight) * (2.0 / static_cast<double>(taps(weight)));
  const Tensor grad_p = 2 * pa * at::mm(grad_b, m), grad_q = 2 * qa * at::mm(grad_a, m.t());
  return {grad_w.to(weight.scalar_type()), grad_p.to(p.scalar_type()), grad_q.to(q.scalar_type())};
}

TORCH_LIBRARY_IMPL(splitkern, CPU, m) {
  m.impl("ext_group_weight_reg_gemms", &group_weight_reg_gemms_aten);
  m.impl("ext_group_weight_reg_gemms_backward", &group_weight_reg_gemms_backward_aten);
}

const KernelInfo cpu_info("group_weight_reg:cpu", "C++: the two GEMMs on M = mean_taps(W^2) via ATen");


}  // namespace splitkern
