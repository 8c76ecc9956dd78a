// fused_adamw_emu.cpp: minilvlm_emu::fused_adamw_, the CUDA kernel of fused_adamw_
// (csrc/cuda/fused_adamw_kernels.cuh) executed by the SIMT emulator on CPU tensors.
// Same schema and checks as the real op; tests compare it with the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/adamw_host.h"
#include "common/schemas.h"
#include "cuda/fused_adamw_kernels.cuh"

namespace minilvlm {
namespace {

// Small, so that tests with a few thousand elements still use several blocks per segment.
constexpr int kEmuMaxBlocks = 4;

template <typename PT, typename DeviceT>
void run(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
         const std::optional<at::Tensor>& master, const AdamwPlan& plan, const float* grad_scale) {
  cuda::launch_fused_adamw<DeviceT>(
      reinterpret_cast<DeviceT*>(param.data_ptr<PT>()), reinterpret_cast<const DeviceT*>(grad.data_ptr<PT>()),
      exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
      master.has_value() ? master->data_ptr<float>() : nullptr, plan.segments.data(),
      static_cast<int64_t>(plan.segments.size()), plan.constants, grad_scale, kEmuMaxBlocks, nullptr);
}

void fused_adamw_emu(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                     const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& master,
                     at::IntArrayRef seg_bounds, at::ArrayRef<double> seg_lr, at::ArrayRef<double> seg_wd,
                     at::IntArrayRef seg_step, double beta1, double beta2, double eps,
                     const std::optional<at::Tensor>& grad_scale) {
  const AdamwPlan plan = plan_fused_adamw(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd,
                                          seg_step, beta1, beta2, eps);
  TORCH_CHECK(param.device().is_cpu(), "minilvlm_emu::fused_adamw_ emulates the CUDA kernel on CPU tensors");
  check_grad_scale(grad_scale);
  if (plan.segments.empty()) return;
  const float* scale = grad_scale.has_value() ? grad_scale->data_ptr<float>() : nullptr;
  switch (param.scalar_type()) {
    case at::kFloat: return run<float, float>(param, grad, exp_avg, exp_avg_sq, master, plan, scale);
    case at::kBFloat16:
      return run<at::BFloat16, __nv_bfloat16>(param, grad, exp_avg, exp_avg_sq, master, plan, scale);
    case at::kHalf: return run<at::Half, __half>(param, grad, exp_avg, exp_avg_sq, master, plan, scale);
    default: TORCH_CHECK(false, "fused_adamw_: unsupported param dtype ", param.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) { m.def(MINILVLM_SCHEMA_FUSED_ADAMW); }
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) { m.impl("fused_adamw_", &fused_adamw_emu); }

}  // namespace minilvlm
