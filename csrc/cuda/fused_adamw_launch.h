// fused_adamw_launch.h: the host side of the CUDA fused_adamw_, shared by the CUDA build
// (csrc/cuda/fused_adamw.cu) and the emulator build (csrc/emu/fused_adamw_emu.cpp): the argument
// checks, the dtype dispatch, the choice of the vector kernel and one launch per
// kAdamwMaxSegments segments; for fused_adamw_multi_, the tensor tables and one launch per table.
// The caller's Target says where the kernels run (see fused_adamw below). ATen headers come before
// the kernel header, as the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "common/dispatch.h"
#include "common/fused_adamw_host.h"
#include "cuda/fused_adamw_kernels.cuh"
#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

// The single-tensor kernel's grid on a GPU is one full wave, sized by the occupancy API at run time
// (one_wave_blocks in cuda/launch.h): asking for a fixed 8 blocks per SM when the registers allow 5
// left a ragged second wave. kAdamwBlocksPerSm is the fallback bound when the SMs were not queried,
// and the emulator's GPU profiles' stand-in for that query: kAdamwMinBlocks, what __launch_bounds__
// guarantees for every variant (the master kernels, at up to 64 registers, get exactly that many).
constexpr int kAdamwBlocksPerSm = kAdamwMinBlocks;

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// One launch per kAdamwMaxSegments segments (one launch for any usual optimizer). grad_scale and
// found_inf are device pointers to one float, or null; config.max_blocks bounds gridDim.x.
template <typename PT>
void launch_fused_adamw(PT* param, const PT* grad, float* exp_avg, float* exp_avg_sq, float* master,
                        const AdamwSegment* segments, int64_t num_segments, const AdamwConstants& c,
                        const float* grad_scale, const float* found_inf, const LaunchConfig& config) {
  const bool vector = aligned_to(param, 4 * sizeof(PT)) && aligned_to(grad, 4 * sizeof(PT)) &&
                      aligned_to(exp_avg, 16) && aligned_to(exp_avg_sq, 16) && (!master || aligned_to(master, 16));
  // Master weights exist only beside bf16/fp16 params (plan_fused_adamw rejects them for fp32).
  constexpr bool kCanHaveMaster = sizeof(PT) == 2;
  auto* kernel = vector ? &fused_adamw_kernel<PT, false, true> : &fused_adamw_kernel<PT, false, false>;
  if (kCanHaveMaster && master)
    kernel = vector ? &fused_adamw_kernel<PT, kCanHaveMaster, true> : &fused_adamw_kernel<PT, kCanHaveMaster, false>;
  for (int64_t first = 0; first < num_segments; first += kAdamwMaxSegments) {
    const int count = static_cast<int>(num_segments - first < kAdamwMaxSegments ? num_segments - first
                                                                                : kAdamwMaxSegments);
    AdamwSegmentTable table;
    int64_t longest = 0;
    for (int i = 0; i < count; ++i) {
      table.seg[i] = segments[first + i];
      const int64_t len = table.seg[i].end - table.seg[i].begin;
      longest = len > longest ? len : longest;
    }
    for (int i = count; i < kAdamwMaxSegments; ++i) table.seg[i] = AdamwSegment{0, 0, 1.0f, 0.0f, 1.0f, 0.0f};
    const int64_t per_block = static_cast<int64_t>(kAdamwThreads) * 4;
    int64_t blocks = (longest + per_block - 1) / per_block;
    const int64_t wave = one_wave_blocks(kernel, kAdamwThreads, config);
    blocks = blocks < 1 ? 1 : (blocks > wave ? wave : blocks);
    MINILVLM_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(count)), dim3(kAdamwThreads),
                    0, config.stream)(param, grad, exp_avg, exp_avg_sq, master, table, c, grad_scale, found_inf);
  }
}

// The op on the kernels. target(param, op) is the backend's (cuda/cuda_target.h, emu/emu_target.h):
// it checks that the tensors live where the kernels run, makes that device current and returns the
// launch configuration. It runs after the argument checks, so a wrong shape is reported first.
template <typename Target>
void fused_adamw(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                 const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& master, at::IntArrayRef seg_bounds,
                 at::ArrayRef<double> seg_lr, at::ArrayRef<double> seg_wd, at::IntArrayRef seg_step, double beta1,
                 double beta2, double eps, const std::optional<at::Tensor>& grad_scale,
                 const std::optional<at::Tensor>& found_inf, Target& target) {
  const AdamwPlan plan = plan_fused_adamw(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd,
                                          seg_step, beta1, beta2, eps);
  const LaunchConfig config = target(param, "fused_adamw_");
  check_grad_scale(grad_scale);
  check_found_inf(found_inf, param);
  if (plan.segments.empty()) return;
  // The kernels read the multiplier on the device (to() returns the tensor itself if it is there).
  const at::Tensor scale = grad_scale.has_value() ? grad_scale->to(param.device(), /*non_blocking=*/true)
                                                  : at::Tensor();
  dispatch_dtype<float, c10::BFloat16, c10::Half>(param.scalar_type(), "fused_adamw_", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_fused_adamw<cuda_scalar_t<T>>(
        cuda_data<T>(param), cuda_data<T>(grad), exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
        master.has_value() ? master->data_ptr<float>() : nullptr, plan.segments.data(),
        static_cast<int64_t>(plan.segments.size()), plan.constants,
        scale.defined() ? scale.data_ptr<float>() : nullptr,
        found_inf.has_value() ? found_inf->data_ptr<float>() : nullptr, config);
  });
}

// fused_adamw_multi_: fills AdamwTensorTable with tensors and their chunks, and launches whenever
// its block slots or its tensor slots run out. A tensor whose chunks do not all fit stays in the
// next table as its tensor 0, apex-style, so a launch carries up to kAdamwListBlocks chunks of
// any mix of small and large tensors.
template <typename PT>
void launch_fused_adamw_multi(const AdamwMultiPlan& plan, const float* grad_scale, const float* found_inf,
                              const LaunchConfig& config) {
  constexpr bool kCanHaveMaster = sizeof(PT) == 2;  // plan_fused_adamw_multi rejects fp32 masters
  auto* kernel = kCanHaveMaster && plan.masters ? &fused_adamw_multi_kernel<PT, kCanHaveMaster>
                                                : &fused_adamw_multi_kernel<PT, false>;
  AdamwTensorTable<PT> table{};
  int tensors = 0, blocks = 0;
  auto launch = [&] {
    MINILVLM_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kAdamwThreads), 0,
                    config.stream)(table, plan.constants, grad_scale, found_inf);
    blocks = 0;
  };
  for (const AdamwTensor& t : plan.tensors) {
    table.param[tensors] = static_cast<PT*>(t.param);
    table.grad[tensors] = static_cast<const PT*>(t.grad);
    table.exp_avg[tensors] = t.exp_avg;
    table.exp_avg_sq[tensors] = t.exp_avg_sq;
    table.master[tensors] = t.master;
    table.seg[tensors] = t.seg;
    ++tensors;
    const int64_t chunks = (t.seg.end + kAdamwChunk - 1) / kAdamwChunk;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      table.block_tensor[blocks] = static_cast<uint8_t>(tensors - 1);
      table.block_chunk[blocks] = static_cast<int32_t>(chunk);
      ++blocks;
      const bool last_chunk = chunk + 1 == chunks;
      if (blocks < kAdamwListBlocks && !(last_chunk && tensors == kAdamwListTensors)) continue;
      launch();
      if (last_chunk) {
        tensors = 0;
      } else {  // the rest of this tensor's chunks go into the next table, as its tensor 0
        table.param[0] = table.param[tensors - 1];
        table.grad[0] = table.grad[tensors - 1];
        table.exp_avg[0] = table.exp_avg[tensors - 1];
        table.exp_avg_sq[0] = table.exp_avg_sq[tensors - 1];
        table.master[0] = table.master[tensors - 1];
        table.seg[0] = table.seg[tensors - 1];
        tensors = 1;
      }
    }
  }
  if (blocks > 0) launch();
}

// The multi-tensor op on the kernels; Target as for fused_adamw above.
template <typename Target>
void fused_adamw_multi(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                       at::TensorList exp_avg_sqs, at::TensorList masters, at::ArrayRef<double> lrs,
                       at::ArrayRef<double> weight_decays, at::IntArrayRef steps, double beta1, double beta2,
                       double eps, const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, Target& target) {
  const AdamwMultiPlan plan = plan_fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, masters, lrs,
                                                     weight_decays, steps, beta1, beta2, eps);
  check_grad_scale(grad_scale, "fused_adamw_multi_");
  if (params.empty()) return;
  const LaunchConfig config = target(params[0], "fused_adamw_multi_");
  check_found_inf(found_inf, params[0], "fused_adamw_multi_", "params[0]");
  if (plan.tensors.empty()) return;
  const at::Tensor scale = grad_scale.has_value() ? grad_scale->to(params[0].device(), /*non_blocking=*/true)
                                                  : at::Tensor();
  dispatch_dtype<float, c10::BFloat16, c10::Half>(params[0].scalar_type(), "fused_adamw_multi_", [&](auto tag) {
    launch_fused_adamw_multi<cuda_scalar_t<typename decltype(tag)::type>>(
        plan, scale.defined() ? scale.data_ptr<float>() : nullptr,
        found_inf.has_value() ? found_inf->data_ptr<float>() : nullptr, config);
  });
}

}  // namespace cuda
}  // namespace minilvlm
