// gelu_launch.h: the host side of the CUDA gelu and gelu_backward, shared by the CUDA build
// (csrc/cuda/gelu.cu) and the emulator build (csrc/emu/gelu_emu.cpp): the checks of
// common/gelu_host.h, the pack width, the grid and the launches of cuda/gelu_kernels.cuh with the
// form of GELU as a template argument. The caller's Target says where the kernels run. ATen
// headers come before the kernel header, as the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <string_view>

#include "common/dispatch.h"
#include "common/gelu_host.h"
#include "cuda/gelu_kernels.cuh"
#include "cuda/launch.h"
#include "cuda/row_launch.h"

namespace minilvlm {
namespace cuda {

// target(x, op): see cuda/rms_norm_launch.h.
template <typename Target>
at::Tensor gelu(const at::Tensor& x_in, std::string_view approximate, Target& target) {
  const GeluKind kind = check_gelu(x_in, approximate);
  const LaunchConfig config = target(x_in, "gelu");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  const int64_t n = x.numel();
  if (n == 0) return y;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "gelu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_pack<T>(packable<T>({&x, &y}, 0), [&](auto pack) {
      constexpr int N = decltype(pack)::value;
      dispatch_gelu_kind(kind, [&](auto kind_tag) {
        auto* kernel = &gelu_forward_kernel<cuda_scalar_t<T>, N, decltype(kind_tag)::value>;
        MINILVLM_LAUNCH(kernel, elementwise_grid(n, N, config), dim3(kElementwiseThreads), 0, config.stream)(
            cuda_data<T>(x), cuda_data<T>(y), n);
      });
    });
  });
  return y;
}

template <typename Target>
at::Tensor gelu_backward(const at::Tensor& grad_in, const at::Tensor& x_in, std::string_view approximate,
                         Target& target) {
  const GeluKind kind = check_gelu_backward(grad_in, x_in, approximate);
  const LaunchConfig config = target(x_in, "gelu_backward");
  const at::Tensor x = x_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  const int64_t n = x.numel();
  if (n == 0) return grad_x;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "gelu_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_pack<T>(packable<T>({&grad, &x, &grad_x}, 0), [&](auto pack) {
      constexpr int N = decltype(pack)::value;
      dispatch_gelu_kind(kind, [&](auto kind_tag) {
        auto* kernel = &gelu_backward_kernel<cuda_scalar_t<T>, N, decltype(kind_tag)::value>;
        MINILVLM_LAUNCH(kernel, elementwise_grid(n, N, config), dim3(kElementwiseThreads), 0, config.stream)(
            cuda_data<T>(grad), cuda_data<T>(x), cuda_data<T>(grad_x), n);
      });
    });
  });
  return grad_x;
}

// The grid bound of the grid-stride kernels, in blocks per SM: one full wave, since eight blocks of
// kElementwiseThreads (256) fill an SM's 2,048 threads; more would only queue a second wave.
constexpr int kGeluBlocksPerSm = 8;

}  // namespace cuda
}  // namespace minilvlm
