// rope_emu.cpp: minilvlm_emu::rope_ and rope_backward, the CUDA kernel of rope
// (csrc/cuda/rope_kernels.cuh, host side csrc/cuda/rope_launch.h) run by the SIMT emulator on CPU
// tensors. Same schemas and checks as the real ops; tests compare them with the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>

#include "common/schemas.h"
#include "cuda/rope_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// Small, so that test shapes still spread over several blocks and each block loops over positions.
constexpr int kEmuMaxBlocks = 3;

void rope_emu(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& cos, const at::Tensor& sin) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kRopeBlocksPerSm);
  cuda::rope_(q, k, cos, sin, target);
}

at::Tensor rope_backward_emu(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kRopeBlocksPerSm);
  return cuda::rope_backward(grad, cos, sin, target);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def(MINILVLM_SCHEMA_ROPE);
  m.def(MINILVLM_SCHEMA_ROPE_BACKWARD);
}
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  m.impl("rope_", &rope_emu);
  m.impl("rope_backward", &rope_backward_emu);
}

}  // namespace minilvlm
