// patch_embed_launch.h: host side of the CUDA patch_embed, shared by the real CUDA build
// (csrc/cuda/patch_embed.cu, cuBLAS GEMMs, the current stream) and the emulator build
// (csrc/emu/patch_embed_emu.cpp, ATen CPU GEMMs, kernels run by the SIMT emulator): tensor
// dtypes -> kernel template arguments, then common/patch_embed_driver.h's order of work.
// ATen headers come before the kernel header, as the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>

#include "common/patch_embed_driver.h"
#include "common/patch_embed_host.h"
#include "cuda/patch_embed_kernels.cuh"

namespace minilvlm {
namespace cuda {

struct PatchLaunchConfig {
  int max_blocks;
  cudaStream_t stream;
};

template <typename Acc>
PatchNorm<Acc> to_kernel_norm(const PatchNormHost& host) {
  TORCH_CHECK(host.scale.size() <= static_cast<size_t>(kPatchMaxChannels), "patch_embed (CUDA kernel): at most ",
              kPatchMaxChannels, " channels are supported, got ", host.scale.size());
  PatchNorm<Acc> norm{};
  for (size_t c = 0; c < host.scale.size(); ++c) {
    norm.scale[c] = static_cast<Acc>(host.scale[c]);
    norm.shift[c] = static_cast<Acc>(host.shift[c]);
  }
  return norm;
}

template <typename AtOut, typename Out, typename Acc>
void patch_rows_typed(const at::Tensor& pixels, const at::Tensor& rows, const PatchGeometry& g,
                      const PatchNormHost& norm, const PatchLaunchConfig& cfg) {
  Out* dst = reinterpret_cast<Out*>(rows.data_ptr<AtOut>());
  const PatchNorm<Acc> k = to_kernel_norm<Acc>(norm);
  if (pixels.scalar_type() == at::kByte)
    launch_patch_rows<unsigned char, Out, Acc>(pixels.data_ptr<uint8_t>(), dst, g, k, cfg.max_blocks, cfg.stream);
  else
    launch_patch_rows<float, Out, Acc>(pixels.data_ptr<float>(), dst, g, k, cfg.max_blocks, cfg.stream);
}

inline void patch_rows(const at::Tensor& pixels, const at::Tensor& rows, const PatchGeometry& g,
                       const PatchNormHost& norm, const PatchLaunchConfig& cfg) {
  switch (rows.scalar_type()) {
    case at::kFloat: return patch_rows_typed<float, float, float>(pixels, rows, g, norm, cfg);
    case at::kBFloat16: return patch_rows_typed<at::BFloat16, __nv_bfloat16, float>(pixels, rows, g, norm, cfg);
    case at::kDouble: return patch_rows_typed<double, double, double>(pixels, rows, g, norm, cfg);
    default: TORCH_CHECK(false, "patch_embed: unsupported dtype ", rows.scalar_type());
  }
}

template <typename AtOut, typename Out, typename Acc>
void epilogue_typed(const at::Tensor& out, const std::optional<at::Tensor>& bias,
                    const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls,
                    const PatchGeometry& g, const PatchLaunchConfig& cfg) {
  const auto ptr = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? reinterpret_cast<const Out*>(t->data_ptr<AtOut>()) : nullptr;
  };
  if (!bias.has_value() && !pos.has_value() && !cls.has_value()) return;
  launch_patch_epilogue<Out, Acc>(reinterpret_cast<Out*>(out.data_ptr<AtOut>()), ptr(bias), ptr(pos), ptr(cls), g,
                                  cfg.max_blocks, cfg.stream);
}

inline void epilogue(const at::Tensor& out, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls,
                     const PatchGeometry& g, const PatchLaunchConfig& cfg) {
  switch (out.scalar_type()) {
    case at::kFloat: return epilogue_typed<float, float, float>(out, bias, pos, cls, g, cfg);
    case at::kBFloat16: return epilogue_typed<at::BFloat16, __nv_bfloat16, float>(out, bias, pos, cls, g, cfg);
    case at::kDouble: return epilogue_typed<double, double, double>(out, bias, pos, cls, g, cfg);
    default: TORCH_CHECK(false, "patch_embed: unsupported dtype ", out.scalar_type());
  }
}

// The whole forward: checks, pixel kernel, GEMM, epilogue kernel. check_device throws unless the
// tensors live where this backend runs.
template <typename CheckDevice, typename ConfigFor>
at::Tensor patch_embed_forward(const at::Tensor& pixels, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos,
                               const std::optional<at::Tensor>& cls, int64_t patch_size,
                               std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std,
                               bool channels_last, CheckDevice check_device, ConfigFor config_for) {
  const PatchGeometry g = plan_patch_embed(pixels, weight, bias, pos, cls, patch_size, channels_last);
  check_device(pixels, "patch_embed");
  const PatchNormHost norm = plan_patch_norm(g.channels, pixels.scalar_type() == at::kByte, mean, std, "patch_embed");
  const PatchLaunchConfig cfg = config_for(pixels);
  return run_patch_embed(
      g, pixels, weight, bias, pos, cls,
      [&](const at::Tensor& px, const at::Tensor& rows) { patch_rows(px, rows, g, norm, cfg); },
      [&](const at::Tensor& out, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& p,
          const std::optional<at::Tensor>& c) { epilogue(out, b, p, c, g, cfg); });
}

template <typename CheckDevice, typename ConfigFor>
std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_embed_backward_device(
    const at::Tensor& grad_out, const at::Tensor& pixels, const at::Tensor& weight, int64_t patch_size,
    std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std, bool channels_last,
    bool has_cls, CheckDevice check_device, ConfigFor config_for) {
  const PatchGeometry g = plan_patch_embed_backward(grad_out, pixels, weight, patch_size, channels_last, has_cls);
  check_device(pixels, "patch_embed_backward");
  const PatchNormHost norm =
      plan_patch_norm(g.channels, pixels.scalar_type() == at::kByte, mean, std, "patch_embed_backward");
  const PatchLaunchConfig cfg = config_for(pixels);
  return run_patch_embed_backward(
      g, grad_out, pixels, weight,
      [&](const at::Tensor& px, const at::Tensor& rows) { patch_rows(px, rows, g, norm, cfg); }, aten_sum_batch);
}

}  // namespace cuda
}  // namespace minilvlm
