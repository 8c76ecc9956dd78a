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

at::Tensor mm_adapter_cuda(const at::Tensor& x, const at::Tensor& t, const at::Tensor& router_w,
                           const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                           const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale,
                           int64_t groups) {
  const MmAdapterShape s = check_mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  TORCH_CHECK(x.is_cuda(), "mm_adapter (CUDA kernel): tensors must be on a CUDA device, got ", x.device());
  mm_cuda_check_dtype(x, "mm_adapter");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor out = x.scalar_type() == at::kFloat
                       ? mm_cuda_forward<float, float>(x, t, router_w, router_b, down_w, down_b, up_w, up_b,
                                                       temperature, scale, groups, s, stream)
                       : mm_cuda_forward<__nv_bfloat16, at::BFloat16>(x, t, router_w, router_b, down_w, down_b, up_w,
                                                                      up_b, temperature, scale, groups, s, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

MmGrads mm_adapter_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& t,
                                 const at::Tensor& router_w, const at::Tensor& router_b, const at::Tensor& down_w,
                                 const at::Tensor& down_b, const at::Tensor& up_w, const at::Tensor& up_b,
                                 double temperature, double scale, int64_t groups) {
  const MmAdapterShape s = check_mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  TORCH_CHECK(x.is_cuda() && grad_out.device() == x.device(),
              "mm_adapter_backward (CUDA kernel): grad_out and x must be on one CUDA device, got ", grad_out.device(),
              " and ", x.device());
  mm_cuda_check_dtype(x, "mm_adapter_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  MmGrads grads = x.scalar_type() == at::kFloat
                      ? mm_cuda_backward<float, float>(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b,
                                                       temperature, scale, groups, s, stream)
                      : mm_cuda_backward<__nv_bfloat16, at::BFloat16>(grad_out, x, t, router_w, router_b, down_w,
                                                                      down_b, up_w, up_b, temperature, scale, groups, s,
                                                                      stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("mm_adapter", &mm_adapter_cuda);
  m.impl("mm_adapter_backward", &mm_adapter_backward_cuda);
}

}  // namespace minilvlm
