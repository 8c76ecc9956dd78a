// layer_norm_launch.h: the host side of the CUDA layer_norm and layer_norm_backward, shared by the
// CUDA build (csrc/cuda/layer_norm.cu) and the emulator build (csrc/emu/layer_norm_emu.cpp): the
// checks of common/layer_norm_host.h, the pack width, the grid, and the launches of
// cuda/layer_norm_kernels.cuh and of the column sums of the weight and bias gradients. The
// caller's Target says where the kernels run. ATen headers come before the kernel header, as the
// emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "common/dispatch.h"
#include "common/layer_norm_host.h"
#include "cuda/launch.h"
#include "cuda/layer_norm_kernels.cuh"
#include "cuda/row_launch.h"

namespace minilvlm {
namespace cuda {

// target(x, op): see cuda/rms_norm_launch.h.
template <typename Target>
at::Tensor layer_norm(const at::Tensor& x_in, const at::Tensor& weight_in, const std::optional<at::Tensor>& bias_in,
                      double eps, Target& target) {
  const RowsShape shape = plan_layer_norm(x_in, weight_in, bias_in, eps);
  const LaunchConfig config = target(x_in, "layer_norm");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor bias = contiguous_or_undefined(bias_in);
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (shape.rows == 0) return y;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using DT = cuda_scalar_t<T>;
    dispatch_pack<T>(packable<T>({&x, &weight, &bias, &y}, shape.dim), [&](auto pack) {
      constexpr int N = decltype(pack)::value;
      const LnArgs args{shape.rows, shape.dim, static_cast<float>(eps)};
      auto* kernel = bias.defined() ? &layer_norm_forward_kernel<DT, N, true> : &layer_norm_forward_kernel<DT, N, false>;
      MINILVLM_LAUNCH(kernel, capped_grid(shape.rows, config.max_blocks), row_block(shape.dim, N), 0, config.stream)(
          cuda_data<T>(x), cuda_data<T>(weight), bias.defined() ? cuda_data<T>(bias) : nullptr, cuda_data<T>(y), args);
    });
  });
  return y;
}

template <typename Target>
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                                   const at::Tensor& weight_in, double eps,
                                                                   bool weight_grad, bool bias_grad, Target& target) {
  const RowsShape shape = plan_layer_norm_backward(grad_y_in, x_in, weight_in, eps);
  const LaunchConfig config = target(x_in, "layer_norm_backward");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), grad_y = grad_y_in.contiguous();
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  const int64_t D = shape.dim, width = (weight_grad ? D : 0) + (bias_grad ? D : 0);
  const dim3 grid = capped_grid(shape.rows, config.max_blocks);
  const at::Tensor partial = at::empty({width > 0 ? static_cast<int64_t>(grid.x) : 0, width}, x.options().dtype(at::kFloat));
  const auto grad_or_empty = [&](bool wanted) {
    return wanted ? at::zeros({D}, weight.options()) : at::empty({0}, weight.options());
  };
  at::Tensor grad_weight = grad_or_empty(weight_grad && shape.rows == 0);
  at::Tensor grad_bias = grad_or_empty(bias_grad && shape.rows == 0);
  if (shape.rows == 0) return {grad_x, grad_weight, grad_bias};
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "layer_norm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using DT = cuda_scalar_t<T>;
    dispatch_pack<T>(packable<T>({&x, &grad_y, &weight, &grad_x}, D), [&](auto pack) {
      constexpr int N = decltype(pack)::value;
      const LnArgs args{shape.rows, D, static_cast<float>(eps)};
      const bool smem_acc = width > 0 && width * static_cast<int64_t>(sizeof(float)) <= kAccSmemBytes;
      const size_t smem = smem_acc ? width * sizeof(float) : 0;
      auto* kernel = &layer_norm_backward_kernel<DT, N>;
      MINILVLM_LAUNCH(kernel, grid, row_block(D, N), smem, config.stream)(
          cuda_data<T>(grad_y), cuda_data<T>(x), cuda_data<T>(weight), cuda_data<T>(grad_x),
          width > 0 ? partial.data_ptr<float>() : nullptr, args, weight_grad, bias_grad, smem_acc);
    });
    if (weight_grad) grad_weight = column_sums<T>(partial, 0, D, weight.options(), config);
    if (bias_grad) grad_bias = column_sums<T>(partial, weight_grad ? D : 0, D, weight.options(), config);
  });
  return {grad_x, grad_weight, grad_bias};
}

// Grid bounds of layer_norm on a GPU (CudaTarget in layer_norm.cu; EmuTarget's GPU profiles) in blocks per
// SM: the forward's grid-stride row loop gets a few waves; the backward fewer, since each of its blocks
// writes a float32 row of the parameter gradients that column_sum_kernel then reads
// (cuda/row_kernels.cuh).
constexpr int kLayerNormForwardBlocksPerSm = 16;
constexpr int kLayerNormBackwardBlocksPerSm = 2;

}  // namespace cuda
}  // namespace minilvlm
