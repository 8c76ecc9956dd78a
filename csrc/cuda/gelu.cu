// gelu.cu: CUDA registration of minilvlm::gelu and gelu_backward. The kernels are in
// gelu_kernels.cuh and their host side in gelu_launch.h (both shared with the emulator build);
// this file runs them on the tensors' CUDA device and stream and reports launch errors.
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <string_view>

#include "cuda/cuda_target.h"
#include "cuda/gelu_launch.h"

namespace minilvlm {
namespace {

at::Tensor gelu_cuda(const at::Tensor& x, c10::string_view approximate) {
  cuda::CudaTarget target(cuda::kGeluBlocksPerSm);
  auto out = cuda::gelu(x, std::string_view(approximate.data(), approximate.size()), target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor gelu_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, c10::string_view approximate) {
  cuda::CudaTarget target(cuda::kGeluBlocksPerSm);
  auto grads = cuda::gelu_backward(grad, x, std::string_view(approximate.data(), approximate.size()), target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("gelu", &gelu_cuda);
  m.impl("gelu_backward", &gelu_backward_cuda);
}

}  // namespace minilvlm
