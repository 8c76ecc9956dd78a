// rope.cu: CUDA registration of minilvlm::rope_ and rope_backward. The kernel is in
// rope_kernels.cuh and its host side in rope_launch.h (both shared with the emulator build); this
// file runs them on the tensors' CUDA device and stream and reports launch errors.
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <optional>

#include "cuda/cuda_target.h"
#include "cuda/rope_launch.h"

namespace minilvlm {
namespace {

void rope_cuda(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& cos, const at::Tensor& sin) {
  cuda::CudaTarget target(cuda::kRopeBlocksPerSm);
  cuda::rope_(q, k, cos, sin, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor rope_backward_cuda(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  cuda::CudaTarget target(cuda::kRopeBlocksPerSm);
  at::Tensor out = cuda::rope_backward(grad, cos, sin, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("rope_", &rope_cuda);
  m.impl("rope_backward", &rope_backward_cuda);
}

}  // namespace minilvlm
