// fused_adamw.cu: CUDA registration of minilvlm::fused_adamw_. The kernel and its launcher
// live in fused_adamw_kernels.cuh (shared with the emulator build); this file checks the
// tensors, picks the stream and device, and reports launch errors.
// Light headers only (ATen/c10), never torch/extension.h: see DESIGN.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/adamw_host.h"
#include "cuda/fused_adamw_kernels.cuh"

namespace minilvlm {
namespace {

template <typename PT, typename DeviceT>
void run(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
         const std::optional<at::Tensor>& master, const AdamwPlan& plan, const float* grad_scale) {
  int sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, param.get_device()));
  const int max_blocks = sm_count * 8;
  cuda::launch_fused_adamw<DeviceT>(
      reinterpret_cast<DeviceT*>(param.data_ptr<PT>()), reinterpret_cast<const DeviceT*>(grad.data_ptr<PT>()),
      exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
      master.has_value() ? master->data_ptr<float>() : nullptr, plan.segments.data(),
      static_cast<int64_t>(plan.segments.size()), plan.constants, grad_scale, max_blocks,
      c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fused_adamw_cuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                      const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& master,
                      at::IntArrayRef seg_bounds, at::ArrayRef<double> seg_lr, at::ArrayRef<double> seg_wd,
                      at::IntArrayRef seg_step, double beta1, double beta2, double eps,
                      const std::optional<at::Tensor>& grad_scale) {
  const AdamwPlan plan = plan_fused_adamw(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd,
                                          seg_step, beta1, beta2, eps);
  TORCH_CHECK(param.is_cuda(), "fused_adamw_ (CUDA kernel): tensors must be on a CUDA device, got ", param.device());
  check_grad_scale(grad_scale);
  if (plan.segments.empty()) return;
  const c10::cuda::CUDAGuard guard(param.device());
  at::Tensor scale_on_device;
  if (grad_scale.has_value()) scale_on_device = grad_scale->to(param.device(), /*non_blocking=*/true);
  const float* scale = grad_scale.has_value() ? scale_on_device.data_ptr<float>() : nullptr;
  switch (param.scalar_type()) {
    case at::kFloat: return run<float, float>(param, grad, exp_avg, exp_avg_sq, master, plan, scale);
    case at::kBFloat16:
      return run<at::BFloat16, __nv_bfloat16>(param, grad, exp_avg, exp_avg_sq, master, plan, scale);
    case at::kHalf: return run<at::Half, __half>(param, grad, exp_avg, exp_avg_sq, master, plan, scale);
    default: TORCH_CHECK(false, "fused_adamw_: unsupported param dtype ", param.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) { m.impl("fused_adamw_", &fused_adamw_cuda); }

}  // namespace minilvlm
