// mm_adapter_launch.h: the host side of the CUDA mm_adapter and mm_adapter_backward, shared by the
// CUDA build (csrc/cuda/mm_adapter.cu) and the emulator build (csrc/emu/mm_adapter_emu.cpp): the
// checks, the per-sample routing and the gradient finalisation of common/mm_adapter_host.h (ATen
// ops on the tensors' device), the workspace, and the launches of cuda/mm_adapter_kernels.cuh.
// The caller's Target says where the kernels run. ATen headers come before the kernel header, as
// the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "common/dispatch.h"
#include "common/mm_adapter_host.h"
#include "cuda/launch.h"
#include "cuda/mm_adapter_kernels.cuh"

namespace minilvlm {
namespace cuda {

inline MmDims mm_dims(const MmAdapterShape& s, const char* op) {
  TORCH_CHECK(s.B <= 65535, op, ": the CUDA kernel takes at most 65535 samples per call, got ", s.B);
  return {s.T, s.D, static_cast<int>(s.r), static_cast<int>(s.rg), static_cast<int>(s.Dg), static_cast<int>(s.groups)};
}

// The backward's blocks per SM on a GPU (CudaTarget in mm_adapter.cu; EmuTarget's GPU profiles):
// two, since each block owns a workspace slot of (r + rg + 1) * D floats.
constexpr int kMmBlocksPerSm = 2;

// The forward's grid aims at kMmForwardWaves x max_blocks blocks (4 per SM on a GPU): each block
// reads A once per tile, so larger tiles save L2 traffic, but at LaVIN's B*T = 2048 tiles of 16
// tokens gave one block per SM of an H100, too few to keep its memory system busy.
constexpr int kMmForwardWaves = 2;

inline int64_t mm_tiles(int64_t T, int64_t tile = kMmTileTokens) { return (T + tile - 1) / tile; }

// Tokens per forward block: B*T spread over the target block count, at most kMmTileTokens.
inline int mm_forward_tile(int64_t B, int64_t T, int64_t max_blocks) {
  const int64_t target = max_blocks * kMmForwardWaves;
  const int64_t tile = target > 0 ? (B * T + target - 1) / target : kMmTileTokens;
  return static_cast<int>(tile < 1 ? 1 : (tile > kMmTileTokens ? kMmTileTokens : tile));
}

// The forward: one block per tile of `tile` tokens of one sample.
inline dim3 mm_forward_grid(int64_t B, int64_t T, int tile) {
  return dim3(static_cast<unsigned>(mm_tiles(T, tile)), static_cast<unsigned>(B));
}

// The backward: (blocks per sample, B) within max_blocks; each block loops over the tiles of its
// sample, so a sample with more tiles than its blocks has its blocks take several.
inline dim3 mm_backward_grid(int64_t B, int64_t T, int64_t max_blocks) {
  const int64_t tiles = mm_tiles(T);
  int64_t per_sample = max_blocks / B;
  per_sample = per_sample < 1 ? 1 : (per_sample > tiles ? tiles : per_sample);
  return dim3(static_cast<unsigned>(per_sample), static_cast<unsigned>(B));
}

// Pass 2 of the backward: out = the sum of `slots` partial sums of n floats, in slot order.
inline void mm_sum_slots(const at::Tensor& part, const at::Tensor& out, int64_t slots, int64_t n,
                         const LaunchConfig& config) {
  int64_t blocks = (n + kMmThreads - 1) / kMmThreads;
  blocks = blocks < 1 ? 1 : (blocks > config.max_blocks ? config.max_blocks : blocks);
  auto* kernel = &mm_sum_slots_kernel;
  MINILVLM_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kMmThreads), 0, config.stream)(
      part.data_ptr<float>(), out.data_ptr<float>(), slots, n);
}

// The backward's (factor, bias) pairs for the entries of h (mm_factor_bias_kernel): [B*T*r, 2].
inline at::Tensor mm_factor_bias(const DropoutKeys& drop, const at::Tensor& bA, int64_t n, int r,
                                 const LaunchConfig& config) {
  at::Tensor fb = at::empty({n, 2}, bA.options());
  int64_t blocks = (n + kMmThreads - 1) / kMmThreads;
  blocks = blocks < 1 ? 1 : (blocks > config.max_blocks ? config.max_blocks : blocks);
  auto* kernel = &mm_factor_bias_kernel;
  MINILVLM_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kMmThreads), 0, config.stream)(
      drop, bA.data_ptr<float>(), fb.data_ptr<float>(), n, r);
  return fb;
}

inline void check_mm_kernel_dtype(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
              " (CUDA kernel): x must be float32, bfloat16 or float16, got ", x.scalar_type(),
              "; minilvlm.ops.mm_adapter runs the reference for other dtypes");
}

// The ops on the kernels. target(x, op) is the backend's (cuda/cuda_target.h, emu/emu_target.h):
// it checks that the tensors live where the kernels run, makes that device current and returns the
// launch configuration (its stream, and the backward's grid bound, which mm_backward_grid divides
// among the samples). It runs after the argument checks, so a wrong shape or a tensor on another
// device is reported first.
template <typename Target>
at::Tensor mm_adapter(const at::Tensor& x_in, const at::Tensor& t, const at::Tensor& router_w,
                      const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                      const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale, int64_t groups,
                      const DropoutKeys& drop, Target& target) {
  const MmAdapterShape s =
      check_mm_adapter(x_in, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  const LaunchConfig config = target(x_in, "mm_adapter");
  check_mm_kernel_dtype(x_in, "mm_adapter");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const MmRouting m = mm_route(s, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale);
  const MmDims dims = mm_dims(s, "mm_adapter");
  const int tile = mm_forward_tile(s.B, s.T, config.max_blocks);
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "mm_adapter", [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto* kernel = &mm_adapter_forward_kernel<cuda_scalar_t<T>>;
    const size_t smem = sizeof(float) * (1 + kMmWarps) * kMmTileTokens * dims.r;  // h, the warps' partial dots
    MINILVLM_LAUNCH(kernel, mm_forward_grid(s.B, s.T, tile), dim3(kMmThreads), smem, config.stream)(
        cuda_data<T>(x), cuda_data<T>(out), m.A.data_ptr<float>(), m.bA.data_ptr<float>(), m.UsT.data_ptr<float>(),
        m.cs.data_ptr<float>(), dims, tile, drop);
  });
  return out;
}

template <typename Target>
MmAdapterGrads mm_adapter_backward(const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& t,
                                   const at::Tensor& router_w, const at::Tensor& router_b, const at::Tensor& down_w,
                                   const at::Tensor& down_b, const at::Tensor& up_w, const at::Tensor& up_b,
                                   double temperature, double scale, int64_t groups, const DropoutKeys& drop,
                                   Target& target) {
  const MmAdapterShape s =
      check_mm_adapter_backward(grad_out, x_in, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  const LaunchConfig config = target(x_in, "mm_adapter_backward");
  check_mm_kernel_dtype(x_in, "mm_adapter_backward");
  const at::Tensor x = x_in.contiguous(), dy = grad_out.contiguous();
  const MmRouting m = mm_route(s, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale);
  const auto opts = m.A.options();
  at::Tensor dx = at::empty_like(x);
  // The token-loop sums, deterministic (cuda/mm_adapter_kernels.cuh): dA and db_A in one buffer,
  // G and S per sample in another, each the slot-order sum of the blocks' partial sums.
  at::Tensor dA_dbA = at::zeros({s.r * s.D + s.r}, opts), G_S = at::zeros({s.B, s.rg * s.D + s.D}, opts);
  if (x.numel() > 0) {
    const MmDims dims = mm_dims(s, "mm_adapter_backward");
    const dim3 grid = mm_backward_grid(s.B, s.T, config.max_blocks);
    const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y;
    at::Tensor dA_part = at::empty({blocks, s.r * s.D + s.r}, opts);
    at::Tensor GS_part = at::empty({static_cast<int64_t>(grid.x), s.B, s.rg * s.D + s.D}, opts);
    const at::Tensor factor_bias = mm_factor_bias(drop, m.bA, s.B * s.T * s.r, dims.r, config);
    dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "mm_adapter_backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      auto* kernel = &mm_adapter_backward_kernel<cuda_scalar_t<T>>;
      const size_t smem = sizeof(float) * (2 + kMmWarps) * kMmTileTokens * dims.r;  // h, dh, the warps' partials
      MINILVLM_LAUNCH(kernel, grid, dim3(kMmThreads), smem, config.stream)(
          cuda_data<T>(x), cuda_data<T>(dy), cuda_data<T>(dx), m.A.data_ptr<float>(), factor_bias.data_ptr<float>(),
          m.UsT.data_ptr<float>(), dA_part.data_ptr<float>(), GS_part.data_ptr<float>(), dims);
    });
    mm_sum_slots(dA_part, dA_dbA, blocks, dA_dbA.numel(), config);
    mm_sum_slots(GS_part, G_S, grid.x, G_S.numel(), config);
  }
  const at::Tensor dA = dA_dbA.narrow(0, 0, s.r * s.D).view({s.r, s.D}), dbA = dA_dbA.narrow(0, s.r * s.D, s.r);
  const at::Tensor G = G_S.narrow(1, 0, s.rg * s.D), S = G_S.narrow(1, s.rg * s.D, s.D);
  auto [dt, drw, drb, ddw, ddb, duw, dub] =
      mm_finalize(s, m, dA, dbA, G, S, temperature, scale, t, router_w, router_b, down_w, down_b, up_w, up_b);
  return {dx, dt, drw, drb, ddw, ddb, duw, dub};
}

}  // namespace cuda
}  // namespace minilvlm
