// Build facts of the CUDA part of the extension (compiled by nvcc for every arch
// in TORCH_CUDA_ARCH_LIST, so a broken CUDA toolchain fails the build, not a user).
#include <cuda_runtime.h>

namespace splitkern {

int cuda_runtime_version_built() { return CUDART_VERSION; }

}  // namespace splitkern
