// rms_norm.cu: CUDA registration of minilvlm::rms_norm and rms_norm_backward. The kernels are in
// rms_norm_kernels.cuh and their host side in rms_norm_launch.h (both shared with the emulator build);
// this file runs them on the tensors' CUDA device and stream and reports launch errors.
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/cuda_target.h"
#include "cuda/rms_norm_launch.h"

namespace minilvlm {
namespace {

std::tuple<at::Tensor, at::Tensor> rms_norm_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight, double eps) {
  cuda::CudaTarget target(cuda::kRmsNormForwardBlocksPerSm);
  auto out = cuda::rms_norm(x, residual, weight, eps, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cuda(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_s, const at::Tensor& s,
    const at::Tensor& weight, double eps, bool weight_grad) {
  cuda::CudaTarget target(cuda::kRmsNormBackwardBlocksPerSm);
  auto grads = cuda::rms_norm_backward(grad_y, grad_s, s, weight, eps, weight_grad, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("rms_norm_backward", &rms_norm_backward_cuda);
}

}  // namespace minilvlm
