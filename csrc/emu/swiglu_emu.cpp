// swiglu_emu.cpp: minilvlm_emu::swiglu and swiglu_backward, the CUDA kernels of swiglu
// (csrc/cuda/swiglu_kernels.cuh, host side csrc/cuda/swiglu_launch.h) run by the SIMT emulator on CPU
// tensors. Same schemas and checks as the real ops; tests compare them with the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>

#include "common/schemas.h"
#include "cuda/swiglu_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// Small, so that test shapes still spread over several blocks and each block loops over its work.
constexpr int kEmuMaxBlocks = 3;

at::Tensor swiglu_emu(const at::Tensor& gate, const at::Tensor& up) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kSwigluBlocksPerSm);
  return cuda::swiglu(gate, up, target);
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward_emu(
    const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kSwigluBlocksPerSm);
  return cuda::swiglu_backward(grad, gate, up, target);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def(MINILVLM_SCHEMA_SWIGLU);
  m.def(MINILVLM_SCHEMA_SWIGLU_BACKWARD);
}
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  m.impl("swiglu", &swiglu_emu);
  m.impl("swiglu_backward", &swiglu_backward_emu);
}

}  // namespace minilvlm
