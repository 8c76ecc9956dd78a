// fused_adamw_host.h: argument checks and per-segment constants of fused_adamw_ and of
// fused_adamw_multi_ (one segment per tensor), shared by the CPU kernel and the CUDA launch code
// (cuda/fused_adamw_launch.h, also built for the emulator), so that every backend rejects the same
// bad input with the same message. Host code only (light ATen headers, no CUDA).
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

inline AdamwConstants adamw_constants(const char* op, double beta1, double beta2, double eps) {
  TORCH_CHECK(beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0,
              op, ": betas must lie in [0, 1), got (", beta1, ", ", beta2, ")");
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  return AdamwConstants{static_cast<float>(1.0 - beta1), static_cast<float>(beta2), static_cast<float>(1.0 - beta2),
                        static_cast<float>(eps)};
}

// The constants of one run [begin, end) sharing lr, weight decay and step, folded in double.
// `what` and `index` name the run in errors ("fused_adamw_: segment 3", "fused_adamw_multi_: tensor 3").
inline AdamwSegment adamw_segment(const char* what, size_t index, int64_t begin, int64_t end, double lr, double wd,
                                  int64_t step, double beta1, double beta2) {
  TORCH_CHECK(step >= 1, what, index, " has step ", step, "; steps count from 1");
  TORCH_CHECK(lr >= 0.0 && wd >= 0.0, what, index, " has lr ", lr, " and weight decay ", wd, "; both must be >= 0");
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return AdamwSegment{begin, end, static_cast<float>(1.0 - lr * wd), static_cast<float>(-lr / bc1),
                      static_cast<float>(std::sqrt(bc2)), 0.0f};
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

  const size_t count = seg_lr.size();
  TORCH_CHECK(seg_bounds.size() == 2 * count && seg_wd.size() == count && seg_step.size() == count,
              "fused_adamw_: ", count, " segments need ", 2 * count, " bounds and ", count,
              " weight decays and steps; got ", seg_bounds.size(), ", ", seg_wd.size(), " and ", seg_step.size());
  AdamwPlan plan;
  plan.constants = adamw_constants("fused_adamw_", beta1, beta2, eps);
  int64_t previous_end = 0;
  for (size_t i = 0; i < count; ++i) {
    const int64_t begin = seg_bounds[2 * i], end = seg_bounds[2 * i + 1];
    TORCH_CHECK(begin >= previous_end && begin <= end && end <= n, "fused_adamw_: segment ", i, " is [", begin,
                ", ", end, "); segments must be sorted, disjoint and inside [0, ", n, ")");
    const AdamwSegment segment = adamw_segment("fused_adamw_: segment ", i, begin, end, seg_lr[i], seg_wd[i],
                                               seg_step[i], beta1, beta2);
    previous_end = end;
    if (begin < end) plan.segments.push_back(segment);
  }
  return plan;
}

// One tensor of fused_adamw_multi_: its buffers (master null without masters) and its constants,
// as the one segment [0, numel).
struct AdamwTensor {
  void* param;
  const void* grad;
  float* exp_avg;
  float* exp_avg_sq;
  float* master;
  AdamwSegment seg;
};

struct AdamwMultiPlan {
  std::vector<AdamwTensor> tensors;  // the non-empty ones, in order
  AdamwConstants constants;
  bool masters = false;
};

inline void check_member(const at::Tensor& t, const char* list, size_t i, const at::Tensor& param) {
  TORCH_CHECK(t.is_contiguous(), "fused_adamw_multi_: ", list, "[", i, "] must be contiguous, got shape ", t.sizes(),
              " and strides ", t.strides());
  TORCH_CHECK(t.numel() == param.numel(), "fused_adamw_multi_: ", list, "[", i, "] has ", t.numel(),
              " elements but params[", i, "] has ", param.numel());
  TORCH_CHECK(t.device() == param.device(), "fused_adamw_multi_: ", list, "[", i, "] is on ", t.device(),
              " but params[", i, "] is on ", param.device());
}

// Checks every list (equal lengths; one param dtype; grads as their params; float32 moments and
// masters; every tensor contiguous and on params[0]'s device) and folds each tensor's constants.
inline AdamwMultiPlan plan_fused_adamw_multi(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                             at::TensorList exp_avg_sqs, at::TensorList masters,
                                             at::ArrayRef<double> lrs, at::ArrayRef<double> wds,
                                             at::IntArrayRef steps, double beta1, double beta2, double eps) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && lrs.size() == n &&
                  wds.size() == n && steps.size() == n && (masters.empty() || masters.size() == n),
              "fused_adamw_multi_: ", n, " params need as many grads, exp_avgs, exp_avg_sqs, lrs, weight_decays and "
              "steps (and masters, if any); got ", grads.size(), ", ", exp_avgs.size(), ", ", exp_avg_sqs.size(), ", ",
              lrs.size(), ", ", wds.size(), ", ", steps.size(), " (masters ", masters.size(), ")");
  AdamwMultiPlan plan;
  plan.constants = adamw_constants("fused_adamw_multi_", beta1, beta2, eps);
  plan.masters = !masters.empty();
  if (n == 0) return plan;
  const auto dtype = params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fused_adamw_multi_: params must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(!plan.masters || dtype != at::kFloat, "fused_adamw_multi_: master weights are for bfloat16/float16 "
              "params; params are already float32");
  plan.tensors.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.scalar_type() == dtype, "fused_adamw_multi_: params[", i, "] is ", p.scalar_type(),
                " but params[0] is ", dtype, "; one call takes one param dtype");
    TORCH_CHECK(p.is_contiguous(), "fused_adamw_multi_: params[", i, "] must be contiguous, got shape ", p.sizes(),
                " and strides ", p.strides());
    TORCH_CHECK(p.device() == params[0].device(), "fused_adamw_multi_: params[", i, "] is on ", p.device(),
                " but params[0] is on ", params[0].device());
    TORCH_CHECK(grads[i].scalar_type() == dtype, "fused_adamw_multi_: grads[", i, "] is ", grads[i].scalar_type(),
                " but params[", i, "] is ", dtype);
    check_member(grads[i], "grads", i, p);
    check_member(exp_avgs[i], "exp_avgs", i, p);
    check_member(exp_avg_sqs[i], "exp_avg_sqs", i, p);
    TORCH_CHECK(exp_avgs[i].scalar_type() == at::kFloat && exp_avg_sqs[i].scalar_type() == at::kFloat,
                "fused_adamw_multi_: exp_avgs[", i, "] and exp_avg_sqs[", i, "] must be float32, got ",
                exp_avgs[i].scalar_type(), " and ", exp_avg_sqs[i].scalar_type());
    if (plan.masters) {
      check_member(masters[i], "masters", i, p);
      TORCH_CHECK(masters[i].scalar_type() == at::kFloat, "fused_adamw_multi_: masters[", i,
                  "] must be float32, got ", masters[i].scalar_type());
    }
    const AdamwSegment seg = adamw_segment("fused_adamw_multi_: tensor ", i, 0, p.numel(), lrs[i], wds[i], steps[i],
                                           beta1, beta2);
    if (p.numel() == 0) continue;
    plan.tensors.push_back(AdamwTensor{p.data_ptr(), grads[i].const_data_ptr(), exp_avgs[i].data_ptr<float>(),
                                       exp_avg_sqs[i].data_ptr<float>(),
                                       plan.masters ? masters[i].data_ptr<float>() : nullptr, seg});
  }
  return plan;
}

// The grad multiplier (unscale and/or clip) as a 1-element float32 tensor, or 1 when absent.
inline void check_grad_scale(const std::optional<at::Tensor>& grad_scale, const char* op = "fused_adamw_") {
  if (!grad_scale.has_value()) return;
  TORCH_CHECK(grad_scale->numel() == 1 && grad_scale->scalar_type() == at::kFloat,
              op, ": grad_scale must be a 1-element float32 tensor, got ", grad_scale->scalar_type(),
              " of shape ", grad_scale->sizes());
}

// The skip flag: a 1-element float32 tensor on param's device (non-zero: skip the step). Unlike
// grad_scale it is never copied across devices: a flag produced on the host for device buffers
// would mean the caller already synchronised, which is what the flag exists to avoid.
inline void check_found_inf(const std::optional<at::Tensor>& found_inf, const at::Tensor& param,
                            const char* op = "fused_adamw_", const char* param_name = "param") {
  if (!found_inf.has_value()) return;
  TORCH_CHECK(found_inf->numel() == 1 && found_inf->scalar_type() == at::kFloat,
              op, ": found_inf must be a 1-element float32 tensor, got ", found_inf->scalar_type(),
              " of shape ", found_inf->sizes());
  TORCH_CHECK(found_inf->device() == param.device(), op, ": found_inf is on ", found_inf->device(),
              " but ", param_name, " is on ", param.device(), "; make the flag where the grads are");
}

}  // namespace minilvlm
