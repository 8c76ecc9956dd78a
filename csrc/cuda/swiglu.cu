// swiglu.cu: CUDA registration of minilvlm::swiglu and swiglu_backward. The kernels are in
// swiglu_kernels.cuh and their host side in swiglu_launch.h (both shared with the emulator build);
// this file runs them on the tensors' CUDA device and stream and reports launch errors.
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/cuda_target.h"
#include "cuda/swiglu_launch.h"

namespace minilvlm {
namespace {

at::Tensor swiglu_cuda(const at::Tensor& gate, const at::Tensor& up) {
  cuda::CudaTarget target(cuda::kSwigluBlocksPerSm);
  auto out = cuda::swiglu(gate, up, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward_cuda(
    const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up) {
  cuda::CudaTarget target(cuda::kSwigluBlocksPerSm);
  auto grads = cuda::swiglu_backward(grad, gate, up, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("swiglu", &swiglu_cuda);
  m.impl("swiglu_backward", &swiglu_backward_cuda);
}

}  // namespace minilvlm
