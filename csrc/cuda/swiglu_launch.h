// swiglu_launch.h: the host side of the CUDA swiglu and swiglu_backward, shared by the CUDA build
// (csrc/cuda/swiglu.cu) and the emulator build (csrc/emu/swiglu_emu.cpp): the checks of
// common/swiglu_host.h, the pack width, the grid and the launches of cuda/swiglu_kernels.cuh. The
// caller's Target says where the kernels run. ATen headers come before the kernel header, as the
// emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "common/dispatch.h"
#include "common/swiglu_host.h"
#include "cuda/launch.h"
#include "cuda/row_launch.h"
#include "cuda/swiglu_kernels.cuh"

namespace minilvlm {
namespace cuda {

// target(gate, op): see cuda/rms_norm_launch.h.
template <typename Target>
at::Tensor swiglu(const at::Tensor& gate_in, const at::Tensor& up_in, Target& target) {
  check_swiglu(gate_in, up_in);
  const LaunchConfig config = target(gate_in, "swiglu");
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  at::Tensor y = at::empty(gate.sizes(), gate.options());
  const int64_t n = gate.numel();
  if (n == 0) return y;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(gate.scalar_type(), "swiglu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_pack<T>(packable<T>({&gate, &up, &y}, 0), [&](auto pack) {
      constexpr int N = decltype(pack)::value;
      auto* kernel = &swiglu_forward_kernel<cuda_scalar_t<T>, N>;
      MINILVLM_LAUNCH(kernel, elementwise_grid(n, N, config), dim3(kElementwiseThreads), 0, config.stream)(
          cuda_data<T>(gate), cuda_data<T>(up), cuda_data<T>(y), n);
    });
  });
  return y;
}

template <typename Target>
std::tuple<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& grad_in, const at::Tensor& gate_in,
                                                   const at::Tensor& up_in, Target& target) {
  check_swiglu_backward(grad_in, gate_in, up_in);
  const LaunchConfig config = target(gate_in, "swiglu_backward");
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_gate = at::empty(gate.sizes(), gate.options()), grad_up = at::empty(gate.sizes(), gate.options());
  const int64_t n = gate.numel();
  if (n == 0) return {grad_gate, grad_up};
  dispatch_dtype<float, c10::BFloat16, c10::Half>(gate.scalar_type(), "swiglu_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_pack<T>(packable<T>({&grad, &gate, &up, &grad_gate, &grad_up}, 0), [&](auto pack) {
      constexpr int N = decltype(pack)::value;
      auto* kernel = &swiglu_backward_kernel<cuda_scalar_t<T>, N>;
      MINILVLM_LAUNCH(kernel, elementwise_grid(n, N, config), dim3(kElementwiseThreads), 0, config.stream)(
          cuda_data<T>(grad), cuda_data<T>(gate), cuda_data<T>(up), cuda_data<T>(grad_gate), cuda_data<T>(grad_up), n);
    });
  });
  return {grad_gate, grad_up};
}

// The grid bound of the grid-stride kernels, in blocks per SM: one full wave, since eight blocks of
// kElementwiseThreads (256) fill an SM's 2,048 threads; more would only queue a second wave.
constexpr int kSwigluBlocksPerSm = 8;

}  // namespace cuda
}  // namespace minilvlm
