// layer_norm.cu: CUDA registration of minilvlm::layer_norm and layer_norm_backward. The kernels are in
// layer_norm_kernels.cuh and their host side in layer_norm_launch.h (both shared with the emulator build);
// this file runs them on the tensors' CUDA device and stream and reports launch errors.
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/cuda_target.h"
#include "cuda/layer_norm_launch.h"

namespace minilvlm {
namespace {

at::Tensor layer_norm_cuda(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, double eps) {
  cuda::CudaTarget target(cuda::kLayerNormForwardBlocksPerSm);
  auto out = cuda::layer_norm(x, weight, bias, eps, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, double eps,
    bool weight_grad, bool bias_grad) {
  cuda::CudaTarget target(cuda::kLayerNormBackwardBlocksPerSm);
  auto grads = cuda::layer_norm_backward(grad_y, x, weight, eps, weight_grad, bias_grad, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("layer_norm", &layer_norm_cuda);
  m.impl("layer_norm_backward", &layer_norm_backward_cuda);
}

}  // namespace minilvlm
