// rms_norm_host.h: the host side of rms_norm and rms_norm_backward that the CPU kernel and the CUDA
// launch code (cuda/rms_norm_launch.h, also built for the emulator) share: the argument checks and
// the outputs' allocation. Host code only (light ATen headers, no CUDA).
//
//   forward   s = x + residual (rounded to x's dtype; absent without a residual: then s is x),
//             rstd = 1 / sqrt(mean(s^2) + eps) in float32, y = weight * to_dtype(s * rstd)
//   backward  gw = grad_y * weight (float32), coef = sum(gw * s) * rstd^2 / D,
//             grad_s = (gw - s * coef) * rstd + grad_s_in; grad_weight = sum over rows of
//             grad_y * to_dtype(s * rstd). rstd is recomputed from s (the same code as the
//             forward's, so the same value), which costs nothing: the row is read anyway.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/rows_host.h"

namespace minilvlm {

inline RowsShape plan_rms_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
                               double eps) {
  const char* op = "rms_norm";
  const RowsShape shape = norm_rows(x, op);
  if (residual.has_value()) check_same_as(*residual, "residual", x, "x", op);
  check_channel_param(weight, "weight", x, op);
  check_eps(eps, op);
  return shape;
}

inline RowsShape plan_rms_norm_backward(const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_s,
                                        const at::Tensor& s, const at::Tensor& weight, double eps) {
  const char* op = "rms_norm_backward";
  const RowsShape shape = norm_rows(s, op);
  check_same_as(grad_y, "grad_y", s, "s", op);
  if (grad_s.has_value()) check_same_as(*grad_s, "grad_s", s, "s", op);
  check_channel_param(weight, "weight", s, op);
  check_eps(eps, op);
  return shape;
}

// The forward's outputs: y, and s when there is a residual (an empty [0] tensor otherwise: s is x).
struct RmsNormOutputs {
  at::Tensor y, s;
};
inline RmsNormOutputs rms_norm_outputs(const at::Tensor& x, bool has_residual) {
  return {at::empty(x.sizes(), x.options()), at::empty(has_residual ? x.sizes() : at::IntArrayRef{0}, x.options())};
}

}  // namespace minilvlm
