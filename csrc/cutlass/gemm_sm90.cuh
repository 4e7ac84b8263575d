// One CUTLASS 3.x sm90 ptr-array grouped GEMM per (pass, dtype): TMA loads, a warp-specialised
// cooperative mainloop on wgmma, fp32 accumulation, a TMA epilogue storing D (no source C). Every
// group has its own (m, n, k), operand pointers and leading dimensions; a small kernel fills those
// arrays on the GPU from the group table (a kernel parameter), so a call needs no host sync and
// no host -> device copy (CUDA-graph capturable). Included by the three *_sm90.cu files only.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "launch.h"

namespace splitkern {
namespace cutlass_sm90 {

using namespace cute;
using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;
using Shape3 = typename ProblemShape::UnderlyingProblemShape;

template <class Element, class LayoutA, class LayoutB>
struct GroupedGemm {
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlign = 8;  // elements of 16 bytes: what TMA needs of every start and row
  using TileShape = Shape<_128, _128, _64>;
  using ClusterShape = Shape<_1, _1, _1>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD*, kAlign, Element, LayoutD*,
      kAlign, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlign, Element, LayoutB*, kAlign,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  static_assert(Kernel::SharedStorageSize <= 232448, "CUTLASS sm90 GEMM: shared memory over sm_90's 227 KB per block");
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
};

// A stride whose one dynamic mode (the leading dimension) is `ld`; the unit and batch modes are static.
template <class Stride>
CUTLASS_HOST_DEVICE Stride leading(int64_t ld) {
  Stride s{};
  if constexpr (cute::is_static<cute::remove_cvref_t<decltype(cute::get<0>(s))>>::value) {
    cute::get<1>(s) = ld;
  } else {
    cute::get<0>(s) = ld;
  }
  return s;
}

// The per-problem arrays CUTLASS reads, in one device buffer.
template <class G, class Element>
struct Arrays {
  Shape3* shapes;
  const Element** a;
  const Element** b;
  Element** d;
  typename G::StrideA* stride_a;
  typename G::StrideB* stride_b;
  typename G::StrideD* stride_d;
};

template <class G, class Element>
__global__ void fill_arrays(cutlass_problems::Pass pass, cutlass_problems::GroupTable table, const Element* a,
                            const Element* b, Element* d, Arrays<G, Element> out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= table.count) return;
  const cutlass_problems::Problem p = cutlass_problems::problem(pass, table, i);
  out.shapes[i] = Shape3{static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k)};
  out.a[i] = a + p.a_off;
  out.b[i] = b + p.b_off;
  out.d[i] = d + p.d_off;
  out.stride_a[i] = leading<typename G::StrideA>(p.lda);
  out.stride_b[i] = leading<typename G::StrideB>(p.ldb);
  out.stride_d[i] = leading<typename G::StrideD>(p.ldd);
}

inline int64_t aligned(int64_t bytes) { return (bytes + 255) / 256 * 256; }

inline int sm_count(int device) {
  static int counts[64] = {0};
  if (device < 0 || device >= 64) return cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  if (!counts[device]) counts[device] = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  return counts[device];
}

template <class Element, class LayoutA, class LayoutB>
void run(cutlass_problems::Pass pass, const cutlass_problems::GroupTable& table, const void* a, const void* b,
         void* d, at::Device device) {
  using G = GroupedGemm<Element, LayoutA, LayoutB>;
  using Gemm = typename G::Gemm;
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const int64_t n = table.count;
  const int64_t sizes[] = {aligned(n * sizeof(Shape3)), aligned(n * sizeof(void*)), aligned(n * sizeof(void*)),
                           aligned(n * sizeof(void*)), aligned(n * sizeof(typename G::StrideA)),
                           aligned(n * sizeof(typename G::StrideB)), aligned(n * sizeof(typename G::StrideD))};
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  const at::Tensor arrays = at::empty({total}, at::TensorOptions().dtype(at::kByte).device(device));
  char* base = reinterpret_cast<char*>(arrays.data_ptr());
  char* at_[7];
  for (int i = 0; i < 7; ++i) {
    at_[i] = base;
    base += sizes[i];
  }
  const Arrays<G, Element> out{reinterpret_cast<Shape3*>(at_[0]), reinterpret_cast<const Element**>(at_[1]),
                               reinterpret_cast<const Element**>(at_[2]), reinterpret_cast<Element**>(at_[3]),
                               reinterpret_cast<typename G::StrideA*>(at_[4]),
                               reinterpret_cast<typename G::StrideB*>(at_[5]),
                               reinterpret_cast<typename G::StrideD*>(at_[6])};
  fill_arrays<G, Element><<<(n + 127) / 128, 128, 0, stream>>>(pass, table, static_cast<const Element*>(a),
                                                               static_cast<const Element*>(b),
                                                               static_cast<Element*>(d), out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  cutlass::KernelHardwareInfo hw{device.index(), sm_count(device.index())};
  typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGrouped,
                                {static_cast<int>(n), out.shapes, nullptr},
                                {out.a, out.stride_a, out.b, out.stride_b},
                                {{}, nullptr, nullptr, out.d, out.stride_d},
                                hw};
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = 0.0f;
  Gemm gemm;
  cutlass::Status status = gemm.can_implement(args);  // device-only shapes: checks the mode and beta
  TORCH_CHECK(status == cutlass::Status::kSuccess, "block_diag_mm (CUTLASS sm90): cannot implement: ",
              cutlassGetStatusString(status));
  const at::Tensor workspace = at::empty({static_cast<int64_t>(Gemm::get_workspace_size(args)) + 1},
                                         at::TensorOptions().dtype(at::kByte).device(device));
  status = gemm.initialize(args, workspace.data_ptr(), stream);
  TORCH_CHECK(status == cutlass::Status::kSuccess, "block_diag_mm (CUTLASS sm90): initialize failed: ",
              cutlassGetStatusString(status));
  status = gemm.run(stream);
  TORCH_CHECK(status == cutlass::Status::kSuccess, "block_diag_mm (CUTLASS sm90): run failed: ",
              cutlassGetStatusString(status));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The pass's GEMM for fp16 or bf16 (the entry points only call these for 16-bit tensors).
template <class LayoutA, class LayoutB>
void run_16bit(cutlass_problems::Pass pass, const cutlass_problems::GroupTable& table, at::ScalarType dtype,
               const void* a, const void* b, void* d, at::Device device) {
  if (dtype == at::kHalf) {
    run<cutlass::half_t, LayoutA, LayoutB>(pass, table, a, b, d, device);
  } else {
    TORCH_CHECK(dtype == at::kBFloat16, "block_diag_mm (CUTLASS sm90) takes fp16 or bf16, got ", dtype);
    run<cutlass::bfloat16_t, LayoutA, LayoutB>(pass, table, a, b, d, device);
  }
}

}  // namespace cutlass_sm90
}  // namespace splitkern
