// mm_adapter.cu: CUDA registration of minilvlm::mm_adapter and mm_adapter_backward. The kernels are
// in mm_adapter_kernels.cuh and their host side in mm_adapter_launch.h (both shared with the
// emulator build); this file runs them on the tensors' CUDA device and stream and reports launch
// errors.
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "common/mm_adapter_host.h"
#include "cuda/cuda_target.h"
#include "cuda/mm_adapter_launch.h"

namespace minilvlm {
namespace {

at::Tensor mm_adapter_cuda(const at::Tensor& x, const at::Tensor& t, const at::Tensor& router_w,
                           const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                           const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale,
                           int64_t groups, double dropout, int64_t seed, int64_t offset) {
  cuda::CudaTarget target(cuda::kMmBlocksPerSm);
  at::Tensor out = cuda::mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale, groups,
                                    check_mm_dropout(dropout, seed, offset), target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

MmAdapterGrads mm_adapter_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& t,
                                        const at::Tensor& router_w, const at::Tensor& router_b,
                                        const at::Tensor& down_w, const at::Tensor& down_b, const at::Tensor& up_w,
                                        const at::Tensor& up_b, double temperature, double scale, int64_t groups,
                                        double dropout, int64_t seed, int64_t offset) {
  cuda::CudaTarget target(cuda::kMmBlocksPerSm);
  MmAdapterGrads grads = cuda::mm_adapter_backward(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b,
                                                   temperature, scale, groups,
                                                   check_mm_dropout(dropout, seed, offset), target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("mm_adapter", &mm_adapter_cuda);
  m.impl("mm_adapter_backward", &mm_adapter_backward_cuda);
}

}  // namespace minilvlm
