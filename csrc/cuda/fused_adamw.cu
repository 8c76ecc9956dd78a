// fused_adamw.cu: CUDA registration of minilvlm::fused_adamw_ and fused_adamw_multi_. The kernels are in
// fused_adamw_kernels.cuh and its host side in fused_adamw_launch.h (both shared with the emulator
// build); this file runs them on the tensors' CUDA device and stream and reports launch errors.
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <optional>

#include "cuda/cuda_target.h"
#include "cuda/fused_adamw_launch.h"

namespace minilvlm {
namespace {

void fused_adamw_cuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                      const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& master,
                      at::IntArrayRef seg_bounds, at::ArrayRef<double> seg_lr, at::ArrayRef<double> seg_wd,
                      at::IntArrayRef seg_step, double beta1, double beta2, double eps,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf) {
  cuda::CudaTarget target(cuda::kAdamwBlocksPerSm);
  cuda::fused_adamw(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step, beta1, beta2,
                    eps, grad_scale, found_inf, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fused_adamw_multi_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList masters, at::ArrayRef<double> lrs,
                            at::ArrayRef<double> weight_decays, at::IntArrayRef steps, double beta1, double beta2,
                            double eps, const std::optional<at::Tensor>& grad_scale,
                            const std::optional<at::Tensor>& found_inf) {
  cuda::CudaTarget target(cuda::kAdamwBlocksPerSm);  // its grid bound is unused: the tensor tables size the grids
  cuda::fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps, beta1, beta2,
                          eps, grad_scale, found_inf, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("fused_adamw_", &fused_adamw_cuda);
  m.impl("fused_adamw_multi_", &fused_adamw_multi_cuda);
}

}  // namespace minilvlm
