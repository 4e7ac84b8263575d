// splitkern._C: the compiled backend ("extension" in splitkern.use_backend; "cuda" is an alias).
//
// This file holds the shared argument checks, the kernel list and the Python module. Each op's
// CPU kernel lives in csrc/<op>.cpp and its CUDA kernel in csrc/cuda/<op>.cu; each file registers
// its implementations (TORCH_LIBRARY_IMPL) and describes them with a static KernelInfo. No schema
// lives here: splitkern/registry.py holds every op's schema, and importing splitkern.extension
// defines splitkern::ext_<kernel> (and splitkern_emulated::<kernel>) from it.
//
// The ext_* ops are kernels only: the public, differentiable ops are the Python custom ops in
// splitkern/ops, which validate arguments, own the autograd formulas and fake impls, and call
// these through splitkern.backend when the extension backend is selected. `kernels()` lists the
// "op:device" pairs built here (a build without nvcc has the CPU ones only); splitkern.backend
// dispatches to the extension for listed pairs only, so a missing kernel is an explicit
// BackendUnavailableError, never a silent fallback.
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "ops.h"

#ifndef SPLITKERN_CUDA_ARCHS
#define SPLITKERN_CUDA_ARCHS ""  // a C++-only build (CppExtension): no CUDA archs
#endif

namespace splitkern {

#ifdef SPLITKERN_WITH_CUDA
int cuda_runtime_version_built();  // csrc/cuda/build_info.cu
#endif

GroupOffsets group_offsets(IntArrayRef in_sizes, IntArrayRef out_sizes, int64_t taps) {
  TORCH_CHECK(in_sizes.size() == out_sizes.size() && !in_sizes.empty(),
              "in_sizes and out_sizes must list the same number (>= 1) of groups, got ", in_sizes.size(),
              " and ", out_sizes.size());
  GroupOffsets off{{0}, {0}, {0}};
  for (size_t g = 0; g < in_sizes.size(); ++g) {
    TORCH_CHECK(in_sizes[g] >= 0 && out_sizes[g] >= 0, "group sizes must be >= 0, got in_sizes[", g,
                "]=", in_sizes[g], ", out_sizes[", g, "]=", out_sizes[g]);
    off.in.push_back(off.in.back() + in_sizes[g]);
    off.out.push_back(off.out.back() + out_sizes[g]);
    off.weight.push_back(off.weight.back() + in_sizes[g] * out_sizes[g] * taps);
  }
  return off;
}

bool GroupOffsets::equal() const {
  for (int64_t g = 1; g < groups(); ++g) {
    if (in[g + 1] - in[g] != in[1] || out[g + 1] - out[g] != out[1]) return false;
  }
  return weight.back() > 0;
}

void check_matrix(const Tensor& t, const char* name, int64_t cols, const char* cols_name) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == cols, name, " must have shape (M, ", cols, ") (", cols_name,
              "), got ", t.sizes());
}

void check_weight(const Tensor& weight, const GroupOffsets& off) {
  TORCH_CHECK(weight.dim() == 1 && weight.numel() == off.weight.back(), "weight must have shape (",
              off.weight.back(), ",) (sum of in_sizes[g] * out_sizes[g] * taps), got ", weight.sizes());
}

void check_like(const Tensor& ref, const char* ref_name, const Tensor& t, const char* name) {
  TORCH_CHECK(ref.scalar_type() == t.scalar_type(), ref_name, " has dtype ", ref.scalar_type(), " but ", name,
              " has ", t.scalar_type());
  TORCH_CHECK(ref.device() == t.device(), ref_name, " is on ", ref.device(), " but ", name, " is on ", t.device());
}

void check_like_weight(const Tensor& weight, const Tensor& t, const char* name) {
  check_like(weight, "weight", t, name);
}

namespace {

void check_on_weight_device(const Tensor& weight, const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_floating_point(), name, " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK(t.device() == weight.device(), name, " is on ", t.device(), " but weight is on ", weight.device());
}

void check_group_matrix(const Tensor& weight, const Tensor& t, const char* name, int64_t groups, int64_t cols,
                        const char* cols_name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == groups && t.size(1) == cols, name, " must have shape (", groups, ", ",
              cols, ") (G, ", cols_name, "), got ", t.sizes());
  check_on_weight_device(weight, t, name);
}

}  // namespace

void check_reg(const Tensor& weight, const Tensor& p, const Tensor& q) {
  TORCH_CHECK(weight.dim() >= 2, "weight must be (D_out, D_in, ...), got ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), "weight must be a floating-point tensor, got ", weight.scalar_type());
  TORCH_CHECK(p.dim() == 2, "p must have shape (G, ", weight.size(1), ") (G, D_in), got ", p.sizes());
  check_group_matrix(weight, p, "p", p.size(0), weight.size(1), "D_in");
  check_group_matrix(weight, q, "q", p.size(0), weight.size(0), "D_out");
}

void check_reg_backward(const Tensor& weight, const Tensor& p, const Tensor& q, const Tensor& grad_a,
                        const Tensor& grad_b) {
  check_reg(weight, p, q);
  check_group_matrix(weight, grad_a, "grad_a", p.size(0), weight.size(1), "D_in");
  check_group_matrix(weight, grad_b, "grad_b", p.size(0), weight.size(0), "D_out");
}

void check_bias_and_indices(const OptTensor& bias, const OptTensor& in_index, const OptTensor& out_index,
                            int64_t in_features, int64_t out_features, const Tensor& weight) {
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bias must have shape (", out_features,
                ",), got ", bias->sizes());
    check_like_weight(weight, *bias, "bias");
  }
  for (auto [index, size, name] : {std::make_tuple(&in_index, in_features, "in_index"),
                                   std::make_tuple(&out_index, out_features, "out_index")}) {
    if (!index->has_value()) continue;
    const Tensor& t = **index;
    TORCH_CHECK(t.dim() == 1 && t.size(0) == size && t.scalar_type() == at::kLong, name,
                " must be an int64 tensor of shape (", size, ",), got ", t.scalar_type(), " ", t.sizes());
    TORCH_CHECK(t.device() == weight.device(), name, " is on ", t.device(), " but weight is on ", weight.device());
  }
}

GroupOffsets checked_matmul(MatmulOperand which, const Tensor& a, const Tensor& weight, const OptTensor& bias,
                            IntArrayRef in_sizes, IntArrayRef out_sizes, const OptTensor& in_index,
                            const OptTensor& out_index) {
  const auto off = group_offsets(in_sizes, out_sizes, 1);
  const char* name = which == MatmulOperand::kX ? "x" : "grad_out";
  if (which == MatmulOperand::kX) check_matrix(a, name, off.in.back(), "sum of in_sizes");
  else check_matrix(a, name, off.out.back(), "sum of out_sizes");
  check_weight(weight, off);
  check_like_weight(weight, a, name);
  check_bias_and_indices(bias, in_index, out_index, off.in.back(), off.out.back(), weight);
  return off;
}

GroupOffsets checked_matmul_grad_weight(const Tensor& grad_out, const Tensor& x, IntArrayRef in_sizes,
                                        IntArrayRef out_sizes, const OptTensor& in_index,
                                        const OptTensor& out_index) {
  const auto off = group_offsets(in_sizes, out_sizes, 1);
  check_matrix(x, "x", off.in.back(), "sum of in_sizes");
  check_matrix(grad_out, "grad_out", off.out.back(), "sum of out_sizes");
  TORCH_CHECK(grad_out.size(0) == x.size(0), "grad_out has ", grad_out.size(0), " rows but x has ", x.size(0));
  check_like(x, "x", grad_out, "grad_out");
  check_bias_and_indices(std::nullopt, in_index, out_index, off.in.back(), off.out.back(), x);
  return off;
}

Tensor gather_dim1(const Tensor& t, const OptTensor& index) {
  return index.has_value() ? t.index_select(1, *index) : t;
}

Tensor scatter_dim1(const Tensor& t, const OptTensor& index) {
  return index.has_value() ? at::empty_like(t).index_copy_(1, *index, t) : t;
}

std::vector<std::pair<std::string, std::string>>& kernel_registry() {
  static std::vector<std::pair<std::string, std::string>> entries;  // built during static initialisation
  return entries;
}

KernelInfo::KernelInfo(const char* key, const char* what) { kernel_registry().emplace_back(key, what); }

std::vector<std::pair<std::string, std::string>> kernel_info() {
  auto info = kernel_registry();
  std::sort(info.begin(), info.end());
  return info;
}

std::vector<std::string> kernels() {
  std::vector<std::string> names;
  for (const auto& entry : kernel_info()) names.push_back(entry.first);
  return names;
}

int cuda_runtime_version() {
#ifdef SPLITKERN_WITH_CUDA
  return cuda_runtime_version_built();
#else
  return 0;  // a C++-only build (no nvcc): CPU kernels only
#endif
}

}  // namespace splitkern

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "splitkern compiled extension";
  m.def("kernels", &splitkern::kernels, "\"op:device\" pairs implemented by this build");
  m.def("kernel_info", &splitkern::kernel_info, "(\"op:device\", what runs it) pairs");
  m.def("cuda_runtime_version", &splitkern::cuda_runtime_version,
        "CUDART_VERSION the extension was compiled against");
  m.attr("cuda_archs") = SPLITKERN_CUDA_ARCHS;
}
