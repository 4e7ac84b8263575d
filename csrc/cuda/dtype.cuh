// CUDA element types of torch's dtypes and explicit float conversions, shared by the kernels.
// Torch builds with __CUDA_NO_HALF_CONVERSIONS__ (and the bf16 twin), hence the explicit helpers.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Device code that the host emulation of the kernels (grouped_gemm.cuh) also runs.
#define SPLITKERN_HD __host__ __device__ __forceinline__

namespace splitkern {
namespace gemm {

template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

SPLITKERN_HD float to_float(float v) { return v; }
SPLITKERN_HD float to_float(__half v) { return __half2float(v); }
SPLITKERN_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
SPLITKERN_HD T from_float(float v) { return v; }
template <>
SPLITKERN_HD __half from_float<__half>(float v) { return __float2half(v); }
template <>
SPLITKERN_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

}  // namespace gemm
}  // namespace splitkern
