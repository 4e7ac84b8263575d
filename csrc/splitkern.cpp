// splitkern._C: the compiled backend ("cuda" in splitkern.use_backend).
//
// This file holds the one schema list (TORCH_LIBRARY) and the Python module. Each op's
// CPU kernel lives in csrc/<op>.cpp and its CUDA kernel in csrc/cuda/<op>.cu (or, where
// noted in kernel_info(), the same ATen composition registered for CUDA too).
//
// The ext_* ops are kernels only: the public, differentiable ops are the Python custom
// ops in splitkern/ops (schemas identical to these), which validate arguments, own the
// autograd formulas and fake impls, and call these through splitkern.backend when the
// "cuda" backend is selected. `kernels()` lists the "op:device" pairs built here;
// splitkern.backend dispatches to the extension for listed pairs only, so a missing
// kernel is an explicit BackendUnavailableError, never a silent fallback.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <utility>
#include <vector>

#include "ops.h"

namespace splitkern {

int cuda_runtime_version();  // csrc/cuda/build_info.cu

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

Tensor gather_dim1(const Tensor& t, const OptTensor& index) {
  return index.has_value() ? t.index_select(1, *index) : t;
}

Tensor scatter_dim1(const Tensor& t, const OptTensor& index) {
  return index.has_value() ? at::empty_like(t).index_copy_(1, *index, t) : t;
}

// op -> what runs it on each device ("op:device" keys, read by splitkern.info).
std::vector<std::pair<std::string, std::string>> kernel_info() {
  std::vector<std::pair<std::string, std::string>> info = {
      {"block_diag_mm:cpu", "C++: one ATen GEMM per group (one bmm when groups are equal)"},
      {"grouped_conv:cpu", "C++: one ATen conv per group"},
      {"group_weight_reg:cpu", "C++: the two GEMMs on M = mean_taps(W^2) via ATen"},
      {"block_diag_mm:cuda",
       "CUDA: fp16/bf16 forward, grad_input and grad_weight each one tensor-core (wmma) grouped-GEMM launch "
       "with fused gather/scatter (16-row tiles for M <= 16); fp32/fp64 one cuBLAS GEMM per group; grad_bias "
       "one column sum"},
      {"grouped_conv:cuda",
       "CUDA: fp16/bf16 forward, grad_input and grad_weight each one implicit-GEMM tensor-core (wmma) launch "
       "with fused channel gather/scatter; fp32/fp64 one cuDNN call per group (groups=G when equal)"},
      {"group_weight_reg:cuda",
       "CUDA: fused, one pass over W for both GEMMs and one for the backward (fp32/fp16/bf16; fp64 via ATen)"},
  };
#ifdef SPLITKERN_WITH_CUBLAS
  info.emplace_back("block_diag_mm_cublas:cuda",
                    "CUDA: forward as one cublasGemmGroupedBatchedEx call (benchmark line splitkern-cuda-cublas)");
#endif
  return info;
}

std::vector<std::string> kernels() {
  std::vector<std::string> names;
  for (const auto& entry : kernel_info()) names.push_back(entry.first);
  return names;
}

}  // namespace splitkern

TORCH_LIBRARY(splitkern, m) {
  m.def("ext_block_diag_mm(Tensor x, Tensor weight, Tensor? bias, int[] in_sizes, int[] out_sizes, "
        "Tensor? in_index, Tensor? out_index) -> Tensor");
  m.def("ext_block_diag_mm_cublas(Tensor x, Tensor weight, Tensor? bias, int[] in_sizes, int[] out_sizes, "
        "Tensor? in_index, Tensor? out_index) -> Tensor");
  m.def("ext_block_diag_mm_grad_input(Tensor grad_out, Tensor weight, int[] in_sizes, int[] out_sizes, "
        "Tensor? in_index, Tensor? out_index) -> Tensor");
  m.def("ext_block_diag_mm_grad_weight(Tensor grad_out, Tensor x, int[] in_sizes, int[] out_sizes, "
        "Tensor? in_index, Tensor? out_index) -> Tensor");
  m.def("ext_block_diag_mm_grad_bias(Tensor grad_out, Tensor? out_index) -> Tensor");
  m.def("ext_grouped_conv(Tensor x, Tensor weight, Tensor? bias, int[] in_sizes, int[] out_sizes, "
        "int[] kernel_size, int[] stride, int[] padding, int[] dilation, Tensor? in_index, "
        "Tensor? out_index) -> Tensor");
  m.def("ext_grouped_conv_grad_input(Tensor grad_out, Tensor weight, Tensor x, int[] in_sizes, "
        "int[] out_sizes, int[] kernel_size, int[] stride, int[] padding, int[] dilation, Tensor? in_index, "
        "Tensor? out_index) -> Tensor");
  m.def("ext_grouped_conv_grad_weight(Tensor grad_out, Tensor x, Tensor weight, int[] in_sizes, "
        "int[] out_sizes, int[] kernel_size, int[] stride, int[] padding, int[] dilation, Tensor? in_index, "
        "Tensor? out_index) -> Tensor");
  m.def("ext_group_weight_reg_gemms(Tensor weight, Tensor p, Tensor q) -> (Tensor, Tensor)");
  m.def("ext_group_weight_reg_gemms_backward(Tensor weight, Tensor p, Tensor q, Tensor grad_a, "
        "Tensor grad_b) -> (Tensor, Tensor, Tensor)");
}

// The CUDA kernels (tensor-core GEMMs, fused regulariser) run on the host, one simulated
// thread at a time (CPU tensors only; grouped_gemm.cuh, group_weight_reg.cu): so tests check
// the kernels' indexing, tiling and bounds on machines without a GPU. Same schemas as the
// ext_* ops; slow, for tests only.
TORCH_LIBRARY(splitkern_emulated, m) {
  m.def("block_diag_mm(Tensor x, Tensor weight, Tensor? bias, int[] in_sizes, int[] out_sizes, "
        "Tensor? in_index, Tensor? out_index) -> Tensor");
  m.def("block_diag_mm_grad_input(Tensor grad_out, Tensor weight, int[] in_sizes, int[] out_sizes, "
        "Tensor? in_index, Tensor? out_index) -> Tensor");
  m.def("block_diag_mm_grad_weight(Tensor grad_out, Tensor x, int[] in_sizes, int[] out_sizes, "
        "Tensor? in_index, Tensor? out_index) -> Tensor");
  m.def("grouped_conv(Tensor x, Tensor weight, Tensor? bias, int[] in_sizes, int[] out_sizes, "
        "int[] kernel_size, int[] stride, int[] padding, int[] dilation, Tensor? in_index, "
        "Tensor? out_index) -> Tensor");
  m.def("grouped_conv_grad_input(Tensor grad_out, Tensor weight, Tensor x, int[] in_sizes, "
        "int[] out_sizes, int[] kernel_size, int[] stride, int[] padding, int[] dilation, Tensor? in_index, "
        "Tensor? out_index) -> Tensor");
  m.def("grouped_conv_grad_weight(Tensor grad_out, Tensor x, Tensor weight, int[] in_sizes, "
        "int[] out_sizes, int[] kernel_size, int[] stride, int[] padding, int[] dilation, Tensor? in_index, "
        "Tensor? out_index) -> Tensor");
  m.def("group_weight_reg_gemms(Tensor weight, Tensor p, Tensor q) -> (Tensor, Tensor)");
  m.def("group_weight_reg_gemms_backward(Tensor weight, Tensor p, Tensor q, Tensor grad_a, "
        "Tensor grad_b) -> (Tensor, Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "splitkern compiled extension";
  m.def("kernels", &splitkern::kernels, "\"op:device\" pairs implemented by this build");
  m.def("kernel_info", &splitkern::kernel_info, "(\"op:device\", what runs it) pairs");
  m.def("cuda_runtime_version", &splitkern::cuda_runtime_version,
        "CUDART_VERSION the extension was compiled against");
  m.attr("cuda_archs") = SPLITKERN_CUDA_ARCHS;
}
