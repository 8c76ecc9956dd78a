// fused_adamw_host.h: argument checks and per-segment constants of fused_adamw_, shared by the
// CPU kernel and the CUDA launch code (cuda/fused_adamw_launch.h, also built for the emulator), so
// that every backend rejects the same bad input with the same message. Host code only (light
// ATen headers, no CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <vector>

#include "common/fused_adamw_math.h"

namespace minilvlm {

struct AdamwPlan {
  std::vector<AdamwSegment> segments;
  AdamwConstants constants;
};

inline void check_flat(const at::Tensor& t, const char* name, int64_t numel, c10::Device device) {
  TORCH_CHECK(t.dim() == 1 && t.is_contiguous(), "fused_adamw_: ", name,
              " must be a contiguous 1-D flat buffer, got shape ", t.sizes(), " and strides ", t.strides());
  TORCH_CHECK(t.numel() == numel, "fused_adamw_: ", name, " has ", t.numel(),
              " elements but param has ", numel);
  TORCH_CHECK(t.device() == device, "fused_adamw_: ", name, " is on ", t.device(), " but param is on ", device);
}

inline AdamwPlan plan_fused_adamw(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                                  const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& master,
                                  at::IntArrayRef seg_bounds, at::ArrayRef<double> seg_lr,
                                  at::ArrayRef<double> seg_wd, at::IntArrayRef seg_step, double beta1,
                                  double beta2, double eps) {
  const auto dtype = param.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fused_adamw_: param must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(grad.scalar_type() == dtype, "fused_adamw_: grad is ", grad.scalar_type(), " but param is ", dtype);
  const int64_t n = param.numel();
  check_flat(param, "param", n, param.device());
  check_flat(grad, "grad", n, param.device());
  check_flat(exp_avg, "exp_avg", n, param.device());
  check_flat(exp_avg_sq, "exp_avg_sq", n, param.device());
  TORCH_CHECK(exp_avg.scalar_type() == at::kFloat && exp_avg_sq.scalar_type() == at::kFloat,
              "fused_adamw_: exp_avg and exp_avg_sq must be float32, got ", exp_avg.scalar_type(), " and ",
              exp_avg_sq.scalar_type());
  if (master.has_value()) {
    TORCH_CHECK(dtype != at::kFloat, "fused_adamw_: master weights are for bfloat16/float16 params; "
                "param is already float32");
    check_flat(*master, "master", n, param.device());
    TORCH_CHECK(master->scalar_type() == at::kFloat, "fused_adamw_: master must be float32, got ",
                master->scalar_type());
  }
  TORCH_CHECK(beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0,
              "fused_adamw_: betas must lie in [0, 1), got (", beta1, ", ", beta2, ")");
  TORCH_CHECK(eps >= 0.0, "fused_adamw_: eps must be >= 0, got ", eps);

  const size_t count = seg_lr.size();
  TORCH_CHECK(seg_bounds.size() == 2 * count && seg_wd.size() == count && seg_step.size() == count,
              "fused_adamw_: ", count, " segments need ", 2 * count, " bounds and ", count,
              " weight decays and steps; got ", seg_bounds.size(), ", ", seg_wd.size(), " and ", seg_step.size());
  AdamwPlan plan;
  plan.constants = AdamwConstants{static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
                                  static_cast<float>(1.0 - beta2), static_cast<float>(eps)};
  int64_t previous_end = 0;
  for (size_t i = 0; i < count; ++i) {
    const int64_t begin = seg_bounds[2 * i], end = seg_bounds[2 * i + 1];
    TORCH_CHECK(begin >= previous_end && begin <= end && end <= n, "fused_adamw_: segment ", i, " is [", begin,
                ", ", end, "); segments must be sorted, disjoint and inside [0, ", n, ")");
    TORCH_CHECK(seg_step[i] >= 1, "fused_adamw_: segment ", i, " has step ", seg_step[i], "; steps count from 1");
    const double lr = seg_lr[i], wd = seg_wd[i];
    TORCH_CHECK(lr >= 0.0 && wd >= 0.0, "fused_adamw_: segment ", i, " has lr ", lr, " and weight decay ", wd,
                "; both must be >= 0");
    previous_end = end;
    if (begin == end) continue;
    const double step = static_cast<double>(seg_step[i]);
    const double bc1 = 1.0 - std::pow(beta1, step);
    const double bc2 = 1.0 - std::pow(beta2, step);
    plan.segments.push_back(AdamwSegment{begin, end, static_cast<float>(1.0 - lr * wd),
                                         static_cast<float>(-lr / bc1), static_cast<float>(std::sqrt(bc2)), 0.0f});
  }
  return plan;
}

// The grad multiplier (unscale and/or clip) as a 1-element float32 tensor, or 1 when absent.
inline void check_grad_scale(const std::optional<at::Tensor>& grad_scale) {
  if (!grad_scale.has_value()) return;
  TORCH_CHECK(grad_scale->numel() == 1 && grad_scale->scalar_type() == at::kFloat,
              "fused_adamw_: grad_scale must be a 1-element float32 tensor, got ", grad_scale->scalar_type(),
              " of shape ", grad_scale->sizes());
}

// The skip flag: a 1-element float32 tensor on param's device (non-zero: skip the step). Unlike
// grad_scale it is never copied across devices: a flag produced on the host for device buffers
// would mean the caller already synchronised, which is what the flag exists to avoid.
inline void check_found_inf(const std::optional<at::Tensor>& found_inf, const at::Tensor& param) {
  if (!found_inf.has_value()) return;
  TORCH_CHECK(found_inf->numel() == 1 && found_inf->scalar_type() == at::kFloat,
              "fused_adamw_: found_inf must be a 1-element float32 tensor, got ", found_inf->scalar_type(),
              " of shape ", found_inf->sizes());
  TORCH_CHECK(found_inf->device() == param.device(), "fused_adamw_: found_inf is on ", found_inf->device(),
              " but param is on ", param.device(), "; make the flag where the grads are");
}

}  // namespace minilvlm
