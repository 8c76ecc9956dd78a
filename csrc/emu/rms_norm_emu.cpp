// rms_norm_emu.cpp: minilvlm_emu::rms_norm and rms_norm_backward, the CUDA kernels of rms_norm
// (csrc/cuda/rms_norm_kernels.cuh, host side csrc/cuda/rms_norm_launch.h) run by the SIMT emulator on CPU
// tensors. Same schemas and checks as the real ops; tests compare them with the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/schemas.h"
#include "cuda/rms_norm_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// Small, so that test shapes still spread over several blocks and each block loops over its work.
constexpr int kEmuMaxBlocks = 3;

std::tuple<at::Tensor, at::Tensor> rms_norm_emu(
    const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight, double eps) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kRmsNormForwardBlocksPerSm);
  return cuda::rms_norm(x, residual, weight, eps, target);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_emu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_s, const at::Tensor& s,
    const at::Tensor& weight, double eps, bool weight_grad) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kRmsNormBackwardBlocksPerSm);
  return cuda::rms_norm_backward(grad_y, grad_s, s, weight, eps, weight_grad, target);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def(MINILVLM_SCHEMA_RMS_NORM);
  m.def(MINILVLM_SCHEMA_RMS_NORM_BACKWARD);
}
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  m.impl("rms_norm", &rms_norm_emu);
  m.impl("rms_norm_backward", &rms_norm_backward_emu);
}

}  // namespace minilvlm
