// fused_adamw_emu.cpp: minilvlm_emu::fused_adamw_ and fused_adamw_multi_, the CUDA kernels of
// fused_adamw (csrc/cuda/fused_adamw_kernels.cuh, host side csrc/cuda/fused_adamw_launch.h) run by
// the SIMT emulator on CPU tensors. Same schemas and checks as the real ops; tests compare them with
// the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>

#include "common/schemas.h"
#include "cuda/fused_adamw_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// Small, so that tests with a few thousand elements still use several blocks per segment.
constexpr int kEmuMaxBlocks = 4;

void fused_adamw_emu(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                     const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& master,
                     at::IntArrayRef seg_bounds, at::ArrayRef<double> seg_lr, at::ArrayRef<double> seg_wd,
                     at::IntArrayRef seg_step, double beta1, double beta2, double eps,
                     const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kAdamwBlocksPerSm);
  cuda::fused_adamw(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step, beta1, beta2,
                    eps, grad_scale, found_inf, target);
}

void fused_adamw_multi_emu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList exp_avg_sqs, at::TensorList masters, at::ArrayRef<double> lrs,
                           at::ArrayRef<double> weight_decays, at::IntArrayRef steps, double beta1, double beta2,
                           double eps, const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf) {
  const cuda::EmuTarget target(kEmuMaxBlocks);
  cuda::fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps, beta1, beta2,
                          eps, grad_scale, found_inf, target);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def(MINILVLM_SCHEMA_FUSED_ADAMW);
  m.def(MINILVLM_SCHEMA_FUSED_ADAMW_MULTI);
}
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  m.impl("fused_adamw_", &fused_adamw_emu);
  m.impl("fused_adamw_multi_", &fused_adamw_multi_emu);
}

}  // namespace minilvlm
