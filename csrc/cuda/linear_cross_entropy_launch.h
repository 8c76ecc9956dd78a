// linear_cross_entropy_launch.h: the host side of the CUDA linear_cross_entropy, shared by the
// CUDA build (csrc/cuda/linear_cross_entropy.cu: cuBLAS GEMMs, the current stream) and the
// emulator build (csrc/emu/linear_cross_entropy_emu.cpp: ATen CPU GEMMs, kernels run by the SIMT
// emulator): common/linear_cross_entropy_host.h's checks and order of work, with the two kernels
// of cuda/linear_cross_entropy_kernels.cuh as its softmax pass. The caller's Target says where the
// kernels run. ATen headers come before the kernel header, as the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include "common/dispatch.h"
#include "common/linear_cross_entropy_host.h"
#include "cuda/launch.h"
#include "cuda/linear_cross_entropy_kernels.cuh"

namespace minilvlm {
namespace cuda {

// The softmax pass over one chunk of logits [n, V]: row statistics, then (write_grad) the gradient
// in place and the grad_bias partials of its row groups, summed into grad_bias by ATen.
inline void launch_lce_softmax(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& row_loss,
                               const at::Tensor& grad_bias, bool write_grad, const LaunchConfig& config) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  at::Tensor lse = at::empty({rows}, row_loss.options());
  const int64_t stat_blocks = rows < config.max_blocks ? rows : config.max_blocks;
  // Enough row groups to give the grid about config.max_blocks blocks (at least one row each).
  const int64_t column_blocks = (vocab + kLceThreads - 1) / kLceThreads;
  int64_t groups = (config.max_blocks + column_blocks - 1) / column_blocks;
  groups = groups < 1 ? 1 : (groups > rows ? rows : (groups > 65535 ? 65535 : groups));
  const int64_t rows_per_group = (rows + groups - 1) / groups;
  groups = (rows + rows_per_group - 1) / rows_per_group;
  at::Tensor partials = grad_bias.defined() && write_grad ? at::empty({groups, vocab}, row_loss.options())
                                                          : at::Tensor();
  dispatch_dtype<float, c10::BFloat16, c10::Half>(logits.scalar_type(), "linear_cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto* stats = &lce_row_stats_kernel<cuda_scalar_t<T>>;
    MINILVLM_LAUNCH(stats, dim3(static_cast<unsigned>(stat_blocks)), dim3(kLceThreads), 0, config.stream)(
        cuda_data<T>(logits), targets.data_ptr<int64_t>(), lse.data_ptr<float>(), row_loss.data_ptr<float>(), rows,
        vocab);
    if (!write_grad) return;
    auto* grad = &lce_grad_kernel<cuda_scalar_t<T>>;
    MINILVLM_LAUNCH(grad, dim3(static_cast<unsigned>(column_blocks), static_cast<unsigned>(groups)),
                    dim3(kLceThreads), 0, config.stream)(
        cuda_data<T>(logits), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
        partials.defined() ? partials.data_ptr<float>() : nullptr, rows, vocab, rows_per_group);
  });
  if (partials.defined()) grad_bias.add_(partials.sum(0));
}

// The op on the kernels. target(hidden, op) is the backend's (cuda/cuda_target.h,
// emu/emu_target.h); it runs after the argument checks, so a wrong shape is reported first.
template <typename Target>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, at::ScalarType compute_dtype, int64_t chunk_rows, std::array<bool, 3> output_mask,
    Target& target) {
  plan_linear_cross_entropy(hidden, weight, bias, targets, compute_dtype, chunk_rows);
  const LaunchConfig config = target(hidden, "linear_cross_entropy");
  return run_linear_cross_entropy(
      hidden, weight, bias, targets, compute_dtype, chunk_rows, output_mask,
      [&](const at::Tensor& logits, const at::Tensor& tgt, const at::Tensor& row_loss, const at::Tensor& grad_bias,
          bool write_grad) { launch_lce_softmax(logits, tgt, row_loss, grad_bias, write_grad, config); });
}

// Blocks per SM: the row-statistics kernel walks rows grid-stride, and the gradient kernel's row groups
// are sized so that its grid has about this many blocks per SM.
constexpr int kLinearCeBlocksPerSm = 8;

}  // namespace cuda
}  // namespace minilvlm
