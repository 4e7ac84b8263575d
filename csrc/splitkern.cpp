// splitkern._C: the compiled backend ("cuda" in splitkern.use_backend).
//
// Ops get their TORCH_LIBRARY schemas and CPU/CUDA impls here as the C++/CUDA
// backend lands (csrc/<op>.cpp beside csrc/cuda/<op>.cu). `kernels()` lists the
// "op:device" pairs this build implements; splitkern.backend only dispatches to
// the extension for listed pairs, so an op without a kernel here is an explicit
// BackendUnavailableError, never a silent fallback.
#include <torch/extension.h>

#include <string>
#include <vector>

namespace splitkern {

int cuda_runtime_version();  // csrc/cuda/build_info.cu

std::vector<std::string> kernels() { return {}; }

}  // namespace splitkern

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "splitkern compiled extension";
  m.def("kernels", &splitkern::kernels, "\"op:device\" pairs implemented by this build");
  m.def("cuda_runtime_version", &splitkern::cuda_runtime_version,
        "CUDART_VERSION the extension was compiled against");
  m.attr("cuda_archs") = SPLITKERN_CUDA_ARCHS;
}
