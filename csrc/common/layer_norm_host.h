// layer_norm_host.h: the host side of layer_norm and layer_norm_backward that the CPU kernel and
// the CUDA launch code (cuda/layer_norm_launch.h, also built for the emulator) share: the argument
// checks. Host code only (light ATen headers, no CUDA).
//
//   forward   mean = sum(x) / D, var = sum((x - mean)^2) / D (two passes over the row, in float32),
//             rstd = 1 / sqrt(var + eps), y = (x - mean) * rstd * weight + bias, rounded once
//   backward  xhat = (x - mean) * rstd and gw = grad_y * weight, recomputed from x;
//             grad_x = rstd * (gw - sum(gw) / D - xhat * sum(gw * xhat) / D);
//             grad_weight = sum over rows of grad_y * xhat, grad_bias = sum over rows of grad_y.
//             mean and rstd come from the forward's own code, so they are the forward's values.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/rows_host.h"

namespace minilvlm {

inline RowsShape plan_layer_norm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 double eps) {
  const char* op = "layer_norm";
  const RowsShape shape = norm_rows(x, op);
  check_channel_param(weight, "weight", x, op);
  if (bias.has_value()) check_channel_param(*bias, "bias", x, op);
  check_eps(eps, op);
  return shape;
}

inline RowsShape plan_layer_norm_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                          double eps) {
  const char* op = "layer_norm_backward";
  const RowsShape shape = norm_rows(x, op);
  check_same_as(grad_y, "grad_y", x, "x", op);
  check_channel_param(weight, "weight", x, op);
  check_eps(eps, op);
  return shape;
}

}  // namespace minilvlm
