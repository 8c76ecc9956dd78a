// gelu_emu.cpp: minilvlm_emu::gelu and gelu_backward, the CUDA kernels of gelu
// (csrc/cuda/gelu_kernels.cuh, host side csrc/cuda/gelu_launch.h) run by the SIMT emulator on CPU
// tensors. Same schemas and checks as the real ops; tests compare them with the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <string_view>

#include "common/schemas.h"
#include "cuda/gelu_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// Small, so that test shapes still spread over several blocks and each block loops over its work.
constexpr int kEmuMaxBlocks = 3;

at::Tensor gelu_emu(const at::Tensor& x, c10::string_view approximate) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kGeluBlocksPerSm);
  return cuda::gelu(x, std::string_view(approximate.data(), approximate.size()), target);
}

at::Tensor gelu_backward_emu(
    const at::Tensor& grad, const at::Tensor& x, c10::string_view approximate) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kGeluBlocksPerSm);
  return cuda::gelu_backward(grad, x, std::string_view(approximate.data(), approximate.size()), target);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def(MINILVLM_SCHEMA_GELU);
  m.def(MINILVLM_SCHEMA_GELU_BACKWARD);
}
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  m.impl("gelu", &gelu_emu);
  m.impl("gelu_backward", &gelu_backward_emu);
}

}  // namespace minilvlm
