// mm_adapter_emu.cpp: minilvlm_emu::mm_adapter and mm_adapter_backward, the CUDA kernels of
// mm_adapter (csrc/cuda/mm_adapter_kernels.cuh, host side common/mm_adapter_run.h) executed by
// the SIMT emulator on CPU tensors. Same schemas and checks as the real ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/schemas.h"
#include "cuda/mm_adapter_kernels.cuh"
#include "common/mm_adapter_run.h"

namespace minilvlm {
namespace {

// mm_cuda_adapter's on_device: the emulator runs the kernels on CPU tensors and has no streams.
cudaStream_t on_cpu(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), "minilvlm_emu::", op, " emulates the CUDA kernel on CPU tensors");
  return nullptr;
}

at::Tensor mm_adapter_emu(const at::Tensor& x, const at::Tensor& t, const at::Tensor& router_w,
                          const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                          const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale,
                          int64_t groups) {
  return mm_cuda_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale, groups, on_cpu);
}

MmGrads mm_adapter_backward_emu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& t,
                                const at::Tensor& router_w, const at::Tensor& router_b, const at::Tensor& down_w,
                                const at::Tensor& down_b, const at::Tensor& up_w, const at::Tensor& up_b,
                                double temperature, double scale, int64_t groups) {
  return mm_cuda_adapter_backward(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale,
                                  groups, on_cpu);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def(MINILVLM_SCHEMA_MM_ADAPTER);
  m.def(MINILVLM_SCHEMA_MM_ADAPTER_BACKWARD);
}
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  m.impl("mm_adapter", &mm_adapter_emu);
  m.impl("mm_adapter_backward", &mm_adapter_backward_emu);
}

}  // namespace minilvlm
