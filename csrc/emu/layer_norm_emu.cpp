// layer_norm_emu.cpp: minilvlm_emu::layer_norm and layer_norm_backward, the CUDA kernels of layer_norm
// (csrc/cuda/layer_norm_kernels.cuh, host side csrc/cuda/layer_norm_launch.h) run by the SIMT emulator on CPU
// tensors. Same schemas and checks as the real ops; tests compare them with the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/schemas.h"
#include "cuda/layer_norm_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// Small, so that test shapes still spread over several blocks and each block loops over its work.
constexpr int kEmuMaxBlocks = 3;

at::Tensor layer_norm_emu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, double eps) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kLayerNormForwardBlocksPerSm);
  return cuda::layer_norm(x, weight, bias, eps, target);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_emu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, double eps,
    bool weight_grad, bool bias_grad) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kLayerNormBackwardBlocksPerSm);
  return cuda::layer_norm_backward(grad_y, x, weight, eps, weight_grad, bias_grad, target);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def(MINILVLM_SCHEMA_LAYER_NORM);
  m.def(MINILVLM_SCHEMA_LAYER_NORM_BACKWARD);
}
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  m.impl("layer_norm", &layer_norm_emu);
  m.impl("layer_norm_backward", &layer_norm_backward_emu);
}

}  // namespace minilvlm
