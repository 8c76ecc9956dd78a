// row_launch.h: host-side helpers shared by the CUDA launch code of rms_norm, layer_norm, swiglu and
// gelu (csrc/cuda/<op>_launch.h, built for CUDA and for the emulator): the pack width of the
// kernels' loads and stores, block and grid sizes, and the launch of column_sum_kernel
// (cuda/row_kernels.cuh). ATen headers come before the kernel header, as the emulator requires.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <type_traits>

#include "common/dispatch.h"
#include "cuda/launch.h"
#include "cuda/row_kernels.cuh"

namespace minilvlm {
namespace cuda {

// Shared memory a row kernel may use for its gradient accumulator: the default 48 KB per block,
// less room for the kernels' static reduction scratch.
constexpr int64_t kAccSmemBytes = 44 * 1024;

// An optional tensor made contiguous, or an undefined tensor (a null pointer for the kernels).
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// Whether the kernels may move 16-byte packs: every tensor's data 16-byte aligned (undefined
// tensors are skipped) and `period` elements (the row length; 0 for a flat range, which the
// elementwise kernels finish element by element) a whole number of packs.
template <typename T>
bool packable(std::initializer_list<const at::Tensor*> tensors, int64_t period) {
  constexpr int64_t pack = 16 / sizeof(T);
  if (period % pack != 0) return false;
  for (const at::Tensor* t : tensors)
    if (t->defined() && reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) return false;
  return true;
}

// fn(std::integral_constant<int, N>{}) with N = 16 / sizeof(T) when packed, else 1.
template <typename T, typename Fn>
void dispatch_pack(bool packed, Fn&& fn) {
  if (packed)
    fn(std::integral_constant<int, static_cast<int>(16 / sizeof(T))>{});
  else
    fn(std::integral_constant<int, 1>{});
}

// A row block: about four packs per thread per pass, whole warps, at most kRowMaxThreads. The
// forward and backward of an op use the same size, so their row sums add in the same order.
inline dim3 row_block(int64_t dim, int pack) {
  const int64_t packs = (dim + pack - 1) / pack;
  const int64_t warps = (packs + 4 * 32 - 1) / (4 * 32);
  return dim3(static_cast<unsigned>(32 * std::min<int64_t>(std::max<int64_t>(warps, 1), kRowMaxThreads / 32)));
}

// min(work, cap) blocks, at least one.
inline dim3 capped_grid(int64_t work, int64_t cap) {
  const int64_t blocks = std::min(work, cap);
  return dim3(static_cast<unsigned>(std::max<int64_t>(blocks, 1)));
}

// Blocks of kElementwiseThreads for n elements in packs of `pack`, at most config.max_blocks.
inline dim3 elementwise_grid(int64_t n, int pack, const LaunchConfig& config) {
  const int64_t threads_needed = (n / pack) + (n % pack);
  return capped_grid((threads_needed + kElementwiseThreads - 1) / kElementwiseThreads, config.max_blocks);
}

// A parameter gradient from the row kernels' per-block partial rows: the columns
// [offset, offset + width) of partial [groups, ld] summed over the groups, in out's dtype (T).
template <typename T>
at::Tensor column_sums(const at::Tensor& partial, int64_t offset, int64_t width, const at::TensorOptions& options,
                       const LaunchConfig& config) {
  at::Tensor out = at::empty({width}, options);
  if (width == 0) return out;
  auto* kernel = &column_sum_kernel<cuda_scalar_t<T>>;
  const dim3 grid(static_cast<unsigned>((width + 255) / 256));
  MINILVLM_LAUNCH(kernel, grid, dim3(256), 0, config.stream)(partial.data_ptr<float>() + offset, partial.size(0),
                                                             partial.size(1), width, cuda_data<T>(out));
  return out;
}

}  // namespace cuda
}  // namespace minilvlm
