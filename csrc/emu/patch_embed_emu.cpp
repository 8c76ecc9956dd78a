// patch_embed_emu.cpp: minilvlm_emu::patch_embed and patch_embed_backward, the CUDA kernels of
// patch_embed (csrc/cuda/patch_embed_kernels.cuh, host flow csrc/cuda/patch_embed_launch.h)
// executed by the SIMT emulator on CPU tensors, with the GEMMs as ATen CPU matmuls in place of
// cuBLAS. Same schemas and checks as the real ops; tests compare them with the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/schemas.h"
#include "cuda/patch_embed_launch.h"

namespace minilvlm {
namespace {

// Small, so that test shapes still spread over several blocks and each block loops over rows.
constexpr int kEmuMaxBlocks = 3;

void check_cpu(const at::Tensor& pixels, const char* op) {
  TORCH_CHECK(pixels.device().is_cpu(), "minilvlm_emu::", op, " emulates the CUDA kernels on CPU tensors");
}

cuda::PatchLaunchConfig config_for(const at::Tensor&) { return cuda::PatchLaunchConfig{kEmuMaxBlocks, nullptr}; }

at::Tensor patch_embed_emu(const at::Tensor& pixels, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls,
                           int64_t patch_size, std::optional<at::ArrayRef<double>> mean,
                           std::optional<at::ArrayRef<double>> std, bool channels_last) {
  return cuda::patch_embed_forward(pixels, weight, bias, pos, cls, patch_size, mean, std, channels_last, check_cpu,
                                   config_for);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_embed_backward_emu(
    const at::Tensor& grad_out, const at::Tensor& pixels, const at::Tensor& weight, int64_t patch_size,
    std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std, bool channels_last,
    bool has_cls) {
  return cuda::patch_embed_backward_device(grad_out, pixels, weight, patch_size, mean, std, channels_last, has_cls,
                                           check_cpu, config_for);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def(MINILVLM_SCHEMA_PATCH_EMBED);
  m.def(MINILVLM_SCHEMA_PATCH_EMBED_BACKWARD);
}
TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  m.impl("patch_embed", &patch_embed_emu);
  m.impl("patch_embed_backward", &patch_embed_backward_emu);
}

}  // namespace minilvlm
