// swiglu_host.h: the host side of swiglu and swiglu_backward that the CPU kernel and the CUDA
// launch code (cuda/swiglu_launch.h, also built for the emulator) share: the argument checks.
// The math is common/activation_math.h's. Host code only (light ATen headers, no CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/rows_host.h"

namespace minilvlm {

inline void check_swiglu(const at::Tensor& gate, const at::Tensor& up) {
  check_kernel_dtype(gate, "gate", "swiglu");
  check_same_as(up, "up", gate, "gate", "swiglu");
}

inline void check_swiglu_backward(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up) {
  const char* op = "swiglu_backward";
  check_kernel_dtype(gate, "gate", op);
  check_same_as(up, "up", gate, "gate", op);
  check_same_as(grad, "grad", gate, "gate", op);
}

}  // namespace minilvlm
