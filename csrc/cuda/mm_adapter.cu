// mm_adapter.cu: CUDA registration of minilvlm::mm_adapter and mm_adapter_backward. The kernels
// live in mm_adapter_kernels.cuh and their host side in common/mm_adapter_run.h (both shared
// with the emulator build); this file picks the device and stream and reports launch errors.
// Light headers only (ATen/c10), never torch/extension.h: see DESIGN.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/mm_adapter_kernels.cuh"
#include "common/mm_adapter_run.h"

namespace minilvlm {
namespace {

// mm_cuda_adapter's on_device: x on a CUDA device, which the guard makes current; its current stream.
struct OnCudaDevice {
  c10::cuda::OptionalCUDAGuard& guard;
  cudaStream_t operator()(const at::Tensor& x, const char* op) const {
    TORCH_CHECK(x.is_cuda(), op, " (CUDA kernel): tensors must be on a CUDA device, got ", x.device());
    guard.set_device(x.device());
    return c10::cuda::getCurrentCUDAStream().stream();
  }
};

at::Tensor mm_adapter_cuda(const at::Tensor& x, const at::Tensor& t, const at::Tensor& router_w,
                           const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                           const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale,
                           int64_t groups) {
  c10::cuda::OptionalCUDAGuard guard;
  at::Tensor out = mm_cuda_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale, groups,
                                   OnCudaDevice{guard});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

MmGrads mm_adapter_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& t,
                                 const at::Tensor& router_w, const at::Tensor& router_b, const at::Tensor& down_w,
                                 const at::Tensor& down_b, const at::Tensor& up_w, const at::Tensor& up_b,
                                 double temperature, double scale, int64_t groups) {
  c10::cuda::OptionalCUDAGuard guard;
  MmGrads grads = mm_cuda_adapter_backward(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b,
                                           temperature, scale, groups, OnCudaDevice{guard});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("mm_adapter", &mm_adapter_cuda);
  m.impl("mm_adapter_backward", &mm_adapter_backward_cuda);
}

}  // namespace minilvlm
