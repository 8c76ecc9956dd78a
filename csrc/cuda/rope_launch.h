// rope_launch.h: the host side of the CUDA rope_ and rope_backward, shared by the CUDA build
// (csrc/cuda/rope.cu: the current stream) and the emulator build (csrc/emu/rope_emu.cpp: the kernel
// run by the SIMT emulator): common/rope_host.h's checks and order of work with the kernel of
// cuda/rope_kernels.cuh as its pass. The caller's Target says where the kernel runs. ATen headers
// come before the kernel header, as the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "common/dispatch.h"
#include "common/rope_host.h"
#include "cuda/launch.h"
#include "cuda/rope_kernels.cuh"

namespace minilvlm {
namespace cuda {

// The pass: one block per position, at most config.max_blocks blocks (grid-stride).
inline void launch_rope(const RopeGeometry& g, const at::Tensor& q_src, const at::Tensor& q_dst,
                        const at::Tensor& k_src, const at::Tensor& k_dst, const at::Tensor& cos,
                        const at::Tensor& sin, bool inverse, bool copy_rest, const LaunchConfig& config) {
  const int64_t positions = g.batch * g.tokens;
  const int64_t blocks = positions < config.max_blocks ? positions : config.max_blocks;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(q_src.scalar_type(), "rope_", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using DeviceT = cuda_scalar_t<T>;
    const bool has_k = k_src.defined();
    auto* kernel = &rope_kernel<DeviceT>;
    MINILVLM_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks < 1 ? 1 : blocks)), dim3(kRopeThreads), 0,
                    config.stream)(cuda_data<T>(q_src), cuda_data<T>(q_dst), has_k ? cuda_data<T>(k_src) : nullptr,
                                   has_k ? cuda_data<T>(k_dst) : nullptr, cos.data_ptr<float>(), sin.data_ptr<float>(),
                                   g, inverse ? -1.0f : 1.0f, copy_rest);
  });
}

// The ops on the kernel. target(q, op) is the backend's (cuda/cuda_target.h, emu/emu_target.h); it
// runs after the argument checks of the host plan, so a wrong shape is reported first.
template <typename Target>
void rope_(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& cos, const at::Tensor& sin,
           Target& target) {
  plan_rope(q, k, cos, sin);
  const LaunchConfig config = target(q, "rope_");
  run_rope_(q, k, cos, sin,
            [&](const RopeGeometry& g, const at::Tensor& qs, const at::Tensor& qd, const at::Tensor& ks,
                const at::Tensor& kd, const at::Tensor& c, const at::Tensor& s, bool inverse, bool copy_rest) {
              launch_rope(g, qs, qd, ks, kd, c, s, inverse, copy_rest, config);
            });
}

template <typename Target>
at::Tensor rope_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin, Target& target) {
  const at::Tensor walkable = rope_walkable(grad);
  plan_rope_tables(walkable, cos, sin, "grad", "rope_backward");
  const LaunchConfig config = target(walkable, "rope_backward");
  return run_rope_backward(
      walkable, cos, sin,
      [&](const RopeGeometry& g, const at::Tensor& qs, const at::Tensor& qd, const at::Tensor& ks,
          const at::Tensor& kd, const at::Tensor& c, const at::Tensor& s, bool inverse, bool copy_rest) {
        launch_rope(g, qs, qd, ks, kd, c, s, inverse, copy_rest, config);
      });
}

// Grid-stride blocks per SM: one position per block is 64 heads x 64 pairs at LLaMA-7B width (q and k), a
// few waves of them keep the SMs' memory pipes full.
constexpr int kRopeBlocksPerSm = 8;

}  // namespace cuda
}  // namespace minilvlm
