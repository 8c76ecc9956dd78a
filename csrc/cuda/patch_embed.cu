// patch_embed.cu: CUDA registration of minilvlm::patch_embed and patch_embed_backward. The
// kernels live in patch_embed_kernels.cuh and the host flow in patch_embed_launch.h (both
// shared with the emulator build); this file picks the device, stream and grid bound and
// reports launch errors. The GEMMs are ATen's (cuBLAS).
// Light headers only (ATen/c10), never torch/extension.h: see DESIGN.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/patch_embed_launch.h"

namespace minilvlm {
namespace {

void check_cuda(const at::Tensor& pixels, const char* op) {
  TORCH_CHECK(pixels.is_cuda(), op, " (CUDA kernel): tensors must be on a CUDA device, got ", pixels.device());
}

cuda::PatchLaunchConfig config_for(const at::Tensor& pixels) {
  int sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, pixels.get_device()));
  return cuda::PatchLaunchConfig{sm_count * 16, c10::cuda::getCurrentCUDAStream().stream()};
}

at::Tensor patch_embed_cuda(const at::Tensor& pixels, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls,
                            int64_t patch_size, std::optional<at::ArrayRef<double>> mean,
                            std::optional<at::ArrayRef<double>> std, bool channels_last) {
  const c10::cuda::CUDAGuard guard(pixels.device());
  at::Tensor out = cuda::patch_embed_forward(pixels, weight, bias, pos, cls, patch_size, mean, std, channels_last,
                                             check_cuda, config_for);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_embed_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& pixels, const at::Tensor& weight, int64_t patch_size,
    std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std, bool channels_last,
    bool has_cls) {
  const c10::cuda::CUDAGuard guard(pixels.device());
  auto grads = cuda::patch_embed_backward_device(grad_out, pixels, weight, patch_size, mean, std, channels_last,
                                                 has_cls, check_cuda, config_for);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("patch_embed", &patch_embed_cuda);
  m.impl("patch_embed_backward", &patch_embed_backward_cuda);
}

}  // namespace minilvlm
