// rms_norm_launch.h: the host side of the CUDA rms_norm and rms_norm_backward, shared by the CUDA
// build (csrc/cuda/rms_norm.cu) and the emulator build (csrc/emu/rms_norm_emu.cpp): the checks of
// common/rms_norm_host.h, the pack width, the grid, and the launches of
// cuda/rms_norm_kernels.cuh and of the column sums of the weight gradient. The caller's Target says
// where the kernels run. ATen headers come before the kernel header, as the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "common/dispatch.h"
#include "common/rms_norm_host.h"
#include "cuda/launch.h"
#include "cuda/rms_norm_kernels.cuh"
#include "cuda/row_launch.h"

namespace minilvlm {
namespace cuda {

// target(x, op) is the backend's (cuda/cuda_target.h, emu/emu_target.h): it checks that the tensors
// live where the kernels run, makes that device current and returns the launch configuration. It
// runs after the argument checks, so a wrong shape or a tensor on another device is reported first.
template <typename Target>
std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x_in, const std::optional<at::Tensor>& residual_in,
                                            const at::Tensor& weight_in, double eps, Target& target) {
  const RowsShape shape = plan_rms_norm(x_in, residual_in, weight_in, eps);
  const LaunchConfig config = target(x_in, "rms_norm");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), residual = contiguous_or_undefined(residual_in);
  RmsNormOutputs out = rms_norm_outputs(x, residual.defined());
  if (shape.rows == 0) return {out.y, out.s};
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "rms_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using DT = cuda_scalar_t<T>;
    const bool packed = packable<T>({&x, &residual, &weight, &out.y, &out.s}, shape.dim);
    dispatch_pack<T>(packed, [&](auto pack) {
      constexpr int N = decltype(pack)::value;
      const RmsArgs args{shape.rows, shape.dim, static_cast<float>(eps)};
      const dim3 grid = capped_grid(shape.rows, config.max_blocks), block = row_block(shape.dim, N);
      auto* kernel = residual.defined() ? &rms_norm_forward_kernel<DT, N, true> : &rms_norm_forward_kernel<DT, N, false>;
      MINILVLM_LAUNCH(kernel, grid, block, 0, config.stream)(
          cuda_data<T>(x), residual.defined() ? cuda_data<T>(residual) : nullptr, cuda_data<T>(weight),
          cuda_data<T>(out.y), residual.defined() ? cuda_data<T>(out.s) : nullptr, args);
    });
  });
  return {out.y, out.s};
}

template <typename Target>
std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_y_in, const std::optional<at::Tensor>& grad_s_in,
                                                     const at::Tensor& s_in, const at::Tensor& weight_in, double eps,
                                                     bool weight_grad, Target& target) {
  const RowsShape shape = plan_rms_norm_backward(grad_y_in, grad_s_in, s_in, weight_in, eps);
  const LaunchConfig config = target(s_in, "rms_norm_backward");
  const at::Tensor s = s_in.contiguous(), weight = weight_in.contiguous(), grad_y = grad_y_in.contiguous();
  const at::Tensor grad_s = contiguous_or_undefined(grad_s_in);
  at::Tensor grad_in = at::empty(s.sizes(), s.options());
  const int64_t D = shape.dim;
  const dim3 grid = capped_grid(shape.rows, config.max_blocks);
  // Each block's weight-gradient row, summed over the blocks afterwards.
  const at::Tensor partial = at::empty({weight_grad ? static_cast<int64_t>(grid.x) : 0, D}, s.options().dtype(at::kFloat));
  at::Tensor grad_weight = at::empty({0}, weight.options());
  if (shape.rows == 0) {
    if (weight_grad) grad_weight = at::zeros({D}, weight.options());
    return {grad_in, grad_weight};
  }
  dispatch_dtype<float, c10::BFloat16, c10::Half>(s.scalar_type(), "rms_norm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using DT = cuda_scalar_t<T>;
    const bool packed = packable<T>({&s, &grad_y, &grad_s, &weight, &grad_in}, D);
    dispatch_pack<T>(packed, [&](auto pack) {
      constexpr int N = decltype(pack)::value;
      const RmsArgs args{shape.rows, D, static_cast<float>(eps)};
      const bool smem_acc = weight_grad && D * static_cast<int64_t>(sizeof(float)) <= kAccSmemBytes;
      const size_t smem = smem_acc ? D * sizeof(float) : 0;
      auto* kernel = grad_s.defined() ? &rms_norm_backward_kernel<DT, N, true> : &rms_norm_backward_kernel<DT, N, false>;
      MINILVLM_LAUNCH(kernel, grid, row_block(D, N), smem, config.stream)(
          cuda_data<T>(grad_y), grad_s.defined() ? cuda_data<T>(grad_s) : nullptr, cuda_data<T>(s),
          cuda_data<T>(weight), cuda_data<T>(grad_in), weight_grad ? partial.data_ptr<float>() : nullptr, args,
          weight_grad, smem_acc);
    });
    if (weight_grad) grad_weight = column_sums<T>(partial, 0, D, weight.options(), config);
  });
  return {grad_in, grad_weight};
}

// Grid bounds of rms_norm on a GPU (CudaTarget in rms_norm.cu; EmuTarget's GPU profiles) in blocks per SM:
// the forward's grid-stride row loop gets a few waves; the backward fewer, since each of its blocks writes
// a float32 row of the parameter gradients that column_sum_kernel then reads (cuda/row_kernels.cuh).
constexpr int kRmsNormForwardBlocksPerSm = 16;
constexpr int kRmsNormBackwardBlocksPerSm = 2;

}  // namespace cuda
}  // namespace minilvlm
