// The CUTLASS sm90 grouped GEMMs of block_diag_mm (csrc/cutlass/*_sm90.cu, built for sm_90a only),
// as the entry points (csrc/cutlass/block_diag_mm_cutlass.cpp) call them.
#pragma once

#include <ATen/ATen.h>

#include "problems.h"

namespace splitkern {
namespace cutlass_sm90 {

// D_i = A_i B_i for every problem i of `table` (problems.h gives the operands of each pass), fp32
// accumulation, `dtype` fp16 or bf16, on the current stream of `device`. a, b, d: the tensors' starts.
void run_forward(const cutlass_problems::GroupTable& table, at::ScalarType dtype, const void* a, const void* b,
                 void* d, at::Device device);
void run_grad_input(const cutlass_problems::GroupTable& table, at::ScalarType dtype, const void* a, const void* b,
                    void* d, at::Device device);
void run_grad_weight(const cutlass_problems::GroupTable& table, at::ScalarType dtype, const void* a,
                     const void* b, void* d, at::Device device);

}  // namespace cutlass_sm90
}  // namespace splitkern
