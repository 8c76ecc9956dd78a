// patch_embed.cu: CUDA registration of minilvlm::patch_embed and patch_embed_backward. The kernels
// are in patch_embed_kernels.cuh and their host side in patch_embed_launch.h (both shared with the
// emulator build); this file runs them on the tensors' CUDA device and stream and reports launch
// errors. The GEMMs are ATen's (cuBLAS).
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/cuda_target.h"
#include "cuda/patch_embed_launch.h"

namespace minilvlm {
namespace {

at::Tensor patch_embed_cuda(const at::Tensor& pixels, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls,
                            int64_t patch_size, std::optional<at::ArrayRef<double>> mean,
                            std::optional<at::ArrayRef<double>> std, bool channels_last) {
  cuda::CudaTarget target(cuda::kPatchBlocksPerSm);
  at::Tensor out = cuda::patch_embed(pixels, weight, bias, pos, cls, patch_size, mean, std, channels_last, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_embed_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& pixels, const at::Tensor& weight, int64_t patch_size,
    std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std, bool channels_last,
    bool has_cls) {
  cuda::CudaTarget target(cuda::kPatchBlocksPerSm);
  auto grads = cuda::patch_embed_backward(grad_out, pixels, weight, patch_size, mean, std, channels_last, has_cls,
                                          target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) {
  m.impl("patch_embed", &patch_embed_cuda);
  m.impl("patch_embed_backward", &patch_embed_backward_cuda);
}

}  // namespace minilvlm
