// patch_embed_launch.h: the host side of the CUDA patch_embed and patch_embed_backward, shared by
// the CUDA build (csrc/cuda/patch_embed.cu: cuBLAS GEMMs, the current stream) and the emulator
// build (csrc/emu/patch_embed_emu.cpp: ATen CPU GEMMs, kernels run by the SIMT emulator): the
// checks, then common/patch_embed_host.h's order of work with the two kernels of
// cuda/patch_embed_kernels.cuh as its passes. The caller's Target says where the kernels run.
// ATen headers come before the kernel header, as the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "common/dispatch.h"
#include "common/patch_embed_host.h"
#include "cuda/launch.h"
#include "cuda/patch_embed_kernels.cuh"

namespace minilvlm {
namespace cuda {

// Grid-stride blocks per SM for the pixel and epilogue kernels on a GPU (CudaTarget in
// patch_embed.cu; EmuTarget's GPU profiles).
constexpr int kPatchBlocksPerSm = 16;

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

// Both kernels loop over rows: one block per row, at most config.max_blocks blocks.
inline dim3 patch_grid(const PatchGeometry& g, const LaunchConfig& config) {
  const int64_t rows = g.batch * g.tokens;
  const int64_t blocks = rows < config.max_blocks ? rows : config.max_blocks;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : blocks));
}

// The make_rows pass: pixels -> rows [B*T, K] in the weight's dtype.
inline void launch_patch_rows(const at::Tensor& pixels, const at::Tensor& rows, const PatchGeometry& g,
                              const PatchNormHost& norm, const LaunchConfig& config) {
  dispatch_dtype<float, c10::BFloat16, c10::Half, double>(rows.scalar_type(), "patch_embed", [&](auto out_tag) {
    using Out = typename decltype(out_tag)::type;
    using Acc = acc_t<Out>;
    const PatchNorm<Acc> kernel_norm = to_kernel_norm<Acc>(norm);
    dispatch_dtype<uint8_t, float>(pixels.scalar_type(), "patch_embed", [&](auto pixel_tag) {
      using Pix = typename decltype(pixel_tag)::type;
      auto* kernel = &patch_rows_kernel<cuda_scalar_t<Pix>, cuda_scalar_t<Out>, Acc>;
      MINILVLM_LAUNCH(kernel, patch_grid(g, config), dim3(kPatchThreads), 0, config.stream)(
          cuda_data<Pix>(pixels), cuda_data<Out>(rows), g, kernel_norm);
    });
  });
}

// The epilogue pass, in place over out [B, T, D]; bias, pos and cls are each optional.
inline void launch_patch_epilogue(const at::Tensor& out, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls,
                                  const PatchGeometry& g, const LaunchConfig& config) {
  if (!bias.has_value() && !pos.has_value() && !cls.has_value()) return;
  dispatch_dtype<float, c10::BFloat16, c10::Half, double>(out.scalar_type(), "patch_embed", [&](auto tag) {
    using Out = typename decltype(tag)::type;
    using DeviceOut = cuda_scalar_t<Out>;
    const auto data = [](const std::optional<at::Tensor>& t) -> const DeviceOut* {
      return t.has_value() ? cuda_data<Out>(*t) : nullptr;
    };
    auto* kernel = &patch_epilogue_kernel<DeviceOut, acc_t<Out>>;
    MINILVLM_LAUNCH(kernel, patch_grid(g, config), dim3(kPatchThreads), 0, config.stream)(
        cuda_data<Out>(out), data(bias), data(pos), data(cls), g);
  });
}

// The ops on the kernels. target(pixels, op) is the backend's (cuda/cuda_target.h,
// emu/emu_target.h): it checks that the tensors live where the kernels run, makes that device
// current and returns the launch configuration. It runs after the argument checks, so a wrong
// shape is reported first.
template <typename Target>
at::Tensor patch_embed(const at::Tensor& pixels, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls, int64_t patch_size,
                       std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std,
                       bool channels_last, Target& target) {
  const PatchGeometry g = plan_patch_embed(pixels, weight, bias, pos, cls, patch_size, channels_last);
  const LaunchConfig config = target(pixels, "patch_embed");
  const PatchNormHost norm = plan_patch_norm(g.channels, pixels.scalar_type() == at::kByte, mean, std, "patch_embed");
  return run_patch_embed_passes(
      g, pixels, weight, bias, pos, cls,
      [&](const at::Tensor& px, const at::Tensor& rows) { launch_patch_rows(px, rows, g, norm, config); },
      [&](const at::Tensor& out, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& p,
          const std::optional<at::Tensor>& c) { launch_patch_epilogue(out, b, p, c, g, config); });
}

template <typename Target>
std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_embed_backward(
    const at::Tensor& grad_out, const at::Tensor& pixels, const at::Tensor& weight, int64_t patch_size,
    std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std, bool channels_last,
    bool has_cls, Target& target) {
  const PatchGeometry g = plan_patch_embed_backward(grad_out, pixels, weight, patch_size, channels_last, has_cls);
  const LaunchConfig config = target(pixels, "patch_embed_backward");
  const PatchNormHost norm =
      plan_patch_norm(g.channels, pixels.scalar_type() == at::kByte, mean, std, "patch_embed_backward");
  return run_patch_embed_backward_passes(
      g, grad_out, pixels, weight,
      [&](const at::Tensor& px, const at::Tensor& rows) { launch_patch_rows(px, rows, g, norm, config); },
      aten_sum_batch);
}

}  // namespace cuda
}  // namespace minilvlm
