// gelu_host.h: the host side of gelu and gelu_backward that the CPU kernel and the CUDA launch code
// (cuda/gelu_launch.h, also built for the emulator) share: the argument checks and the name of the
// approximation. The math is common/activation_math.h's. Host code only (light ATen headers, no CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string_view>
#include <type_traits>

#include "common/activation_math.h"
#include "common/rows_host.h"

namespace minilvlm {

// "none" (the exact erf form), "tanh" (gelu_new, gelu_pytorch_tanh) or "quick" (CLIP's quick_gelu).
inline GeluKind gelu_kind(std::string_view approximate, const char* op) {
  if (approximate == "none") return GeluKind::kErf;
  if (approximate == "tanh") return GeluKind::kTanh;
  if (approximate == "quick") return GeluKind::kQuick;
  TORCH_CHECK(false, op, ": approximate must be 'none', 'tanh' or 'quick', got '", approximate, "'");
}

inline GeluKind check_gelu(const at::Tensor& x, std::string_view approximate) {
  check_kernel_dtype(x, "x", "gelu");
  return gelu_kind(approximate, "gelu");
}

inline GeluKind check_gelu_backward(const at::Tensor& grad, const at::Tensor& x, std::string_view approximate) {
  const char* op = "gelu_backward";
  check_kernel_dtype(x, "x", op);
  check_same_as(grad, "grad", x, "x", op);
  return gelu_kind(approximate, op);
}

// Calls fn(std::integral_constant<GeluKind, K>{}) for the kind, so kernels get it as a template argument.
template <typename Fn>
void dispatch_gelu_kind(GeluKind kind, Fn&& fn) {
  switch (kind) {
    case GeluKind::kErf: return fn(std::integral_constant<GeluKind, GeluKind::kErf>{});
    case GeluKind::kTanh: return fn(std::integral_constant<GeluKind, GeluKind::kTanh>{});
    case GeluKind::kQuick: return fn(std::integral_constant<GeluKind, GeluKind::kQuick>{});
  }
}

}  // namespace minilvlm
