// mm_adapter_emu.cpp: minilvlm_emu::mm_adapter and mm_adapter_backward, the CUDA kernels of
// mm_adapter (csrc/cuda/mm_adapter_kernels.cuh, host side csrc/cuda/mm_adapter_launch.h) run by the
// SIMT emulator on CPU tensors. Same schemas and checks as the real ops; tests compare them with
// the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/mm_adapter_host.h"
#include "common/schemas.h"
#include "cuda/mm_adapter_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// The backward's grid bound: small, so that test shapes give a sample more tiles than blocks (the
// forward's grid follows the shape).
constexpr int kEmuMaxBlocks = 4;

at::Tensor mm_adapter_emu(const at::Tensor& x, const at::Tensor& t, const at::Tensor& router_w,
                          const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                          const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale,
                          int64_t groups, double dropout, int64_t seed, int64_t offset) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kMmBlocksPerSm);
  return cuda::mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale, groups,
                          check_mm_dropout(dropout, seed, offset), target);
}

MmAdapterGrads mm_adapter_backward_emu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& t,
                                       const at::Tensor& router_w, const at::Tensor& router_b,
                                       const at::Tensor& down_w, const at::Tensor& down_b, const at::Tensor& up_w,
                                       const at::Tensor& up_b, double temperature, double scale, int64_t groups,
                                       double dropout, int64_t seed, int64_t offset) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kMmBlocksPerSm);
  return cuda::mm_adapter_backward(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature,
                                   scale, groups, check_mm_dropout(dropout, seed, offset), target);
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
