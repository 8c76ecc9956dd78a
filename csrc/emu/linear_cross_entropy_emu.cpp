// linear_cross_entropy_emu.cpp: minilvlm_emu::linear_cross_entropy, the CUDA kernels of
// linear_cross_entropy (csrc/cuda/linear_cross_entropy_kernels.cuh, host side
// csrc/cuda/linear_cross_entropy_launch.h) run by the SIMT emulator on CPU tensors, with the GEMMs
// as ATen CPU matmuls in place of cuBLAS. Same schema and checks as the real op; tests compare it
// with the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/schemas.h"
#include "cuda/linear_cross_entropy_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// Small, so that test shapes still spread over several blocks and row groups.
constexpr int kEmuMaxBlocks = 3;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_emu(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, at::ScalarType compute_dtype, int64_t chunk_rows, std::array<bool, 3> output_mask) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kLinearCeBlocksPerSm);
  return cuda::linear_cross_entropy(hidden, weight, bias, targets, compute_dtype, chunk_rows, output_mask, target);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) { m.def(MINILVLM_SCHEMA_LINEAR_CROSS_ENTROPY); }
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) { m.impl("linear_cross_entropy", &linear_cross_entropy_emu); }

}  // namespace minilvlm
