// patch_embed_emu.cpp: minilvlm_emu::patch_embed and patch_embed_backward, the CUDA kernels of
// patch_embed (csrc/cuda/patch_embed_kernels.cuh, host side csrc/cuda/patch_embed_launch.h) run by
// the SIMT emulator on CPU tensors, with the GEMMs as ATen CPU matmuls in place of cuBLAS. Same
// schemas and checks as the real ops; tests compare them with the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/schemas.h"
#include "cuda/patch_embed_launch.h"
#include "emu/emu_target.h"

namespace minilvlm {
namespace {

// Small, so that test shapes still spread over several blocks and each block loops over rows.
constexpr int kEmuMaxBlocks = 3;

at::Tensor patch_embed_emu(const at::Tensor& pixels, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls,
                           int64_t patch_size, std::optional<at::ArrayRef<double>> mean,
                           std::optional<at::ArrayRef<double>> std, bool channels_last) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kPatchBlocksPerSm);
  return cuda::patch_embed(pixels, weight, bias, pos, cls, patch_size, mean, std, channels_last, target);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_embed_backward_emu(
    const at::Tensor& grad_out, const at::Tensor& pixels, const at::Tensor& weight, int64_t patch_size,
    std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std, bool channels_last,
    bool has_cls) {
  const cuda::EmuTarget target(kEmuMaxBlocks, cuda::kPatchBlocksPerSm);
  return cuda::patch_embed_backward(grad_out, pixels, weight, patch_size, mean, std, channels_last, has_cls, target);
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
