// layer_norm_kernels.cuh: the CUDA kernels of minilvlm::layer_norm and layer_norm_backward (the math
// is in common/layer_norm_host.h). Device code only, no ATen: nvcc compiles it into
// csrc/cuda/layer_norm.cu and g++ into the emulator build (csrc/emu/layer_norm_emu.cpp), both
// through cuda/layer_norm_launch.h.
//
// One block per row (grid-stride over rows), threads over N-element packs (cuda/row_kernels.cuh).
// The row is read for its mean, again for the variance about the mean (no cancellation), and again
// to write; the later reads are served by L1/L2, so HBM sees each element once.
//   forward   reads x, writes y                      bf16: 4 B/element, fp32: 8
//   backward  reads grad_y, x, writes grad_x         bf16: 6 B/element, fp32: 12
// The backward recomputes mean and rstd with the forward's code (ln_row_stats), sums gw and
// gw * xhat, then writes grad_x while each block adds grad_y * xhat and grad_y into float32 rows of
// its own (shared memory when they fit, else its row of `partial`): [dweight | dbias] per block,
// summed over the blocks by column_sum_kernel. Each thread owns the same columns in every row.
#pragma once

#include <cstdint>

#include "cuda/convert.cuh"
#include "cuda/launch.h"
#include "cuda/row_kernels.cuh"

namespace minilvlm {
namespace cuda {

struct LnArgs {
  int64_t rows, dim;
  float eps;
};

// mean and rstd of one row, in every thread of the block.
template <typename T, int N>
__device__ __forceinline__ float2 ln_row_stats(const T* __restrict__ x, int64_t D, float eps, float* scratch) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * N;
  float total = 0.0f;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < D; c += step) {
    float v[N];
    load_pack<N>(x + c, v);
#pragma unroll
    for (int j = 0; j < N; ++j) total += v[j];
  }
  const float mean = block_sum(total, scratch) / static_cast<float>(D);
  float squares = 0.0f;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < D; c += step) {
    float v[N];
    load_pack<N>(x + c, v);
#pragma unroll
    for (int j = 0; j < N; ++j) squares = fmaf(v[j] - mean, v[j] - mean, squares);
  }
  return make_float2(mean, rsqrtf(block_sum(squares, scratch) / static_cast<float>(D) + eps));
}

template <typename T, int N, bool kBias>
__global__ void __launch_bounds__(kRowMaxThreads)
    layer_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                              T* __restrict__ y, const LnArgs args) {
  __shared__ float scratch[32];
  const int64_t D = args.dim, step = static_cast<int64_t>(blockDim.x) * N;
  for (int64_t row = blockIdx.x; row < args.rows; row += gridDim.x) {
    const int64_t base = row * D;
    const float2 stats = ln_row_stats<T, N>(x + base, D, args.eps, scratch);
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < D; c += step) {
      float v[N], w[N], b[N];
      load_pack<N>(x + base + c, v);
      load_pack<N>(weight + c, w);
      if constexpr (kBias) load_pack<N>(bias + c, b);
#pragma unroll
      for (int j = 0; j < N; ++j) v[j] = fmaf((v[j] - stats.x) * stats.y, w[j], kBias ? b[j] : 0.0f);
      store_pack<N>(y + base + c, v);
    }
  }
}

// partial: [gridDim.x, width] float32 with width = (weight_grad + bias_grad) * D, written whole;
// smem_acc: accumulate in dynamic shared memory (width floats) instead of the block's partial row.
template <typename T, int N>
__global__ void __launch_bounds__(kRowMaxThreads)
    layer_norm_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ x, const T* __restrict__ weight,
                               T* __restrict__ grad_x, float* __restrict__ partial, const LnArgs args,
                               bool weight_grad, bool bias_grad, bool smem_acc) {
  MINILVLM_DYNAMIC_SMEM(float, smem);
  __shared__ float scratch[32];
  __shared__ float2 scratch2[32];
  const int64_t D = args.dim, step = static_cast<int64_t>(blockDim.x) * N;
  const int64_t first = static_cast<int64_t>(threadIdx.x) * N;
  const int64_t width = (weight_grad ? D : 0) + (bias_grad ? D : 0);
  float* acc = width > 0 ? (smem_acc ? smem : partial + blockIdx.x * width) : nullptr;
  float* acc_w = weight_grad ? acc : nullptr;
  float* acc_b = bias_grad ? acc + (weight_grad ? D : 0) : nullptr;
  for (int64_t c = first; acc && c < D; c += step)  // the columns this thread accumulates, zeroed
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (acc_w) acc_w[c + j] = 0.0f;
      if (acc_b) acc_b[c + j] = 0.0f;
    }
  for (int64_t row = blockIdx.x; row < args.rows; row += gridDim.x) {
    const int64_t base = row * D;
    const float2 stats = ln_row_stats<T, N>(x + base, D, args.eps, scratch);
    float2 sums = make_float2(0.0f, 0.0f);  // sum gw, sum gw * xhat
    for (int64_t c = first; c < D; c += step) {
      float v[N], g[N], w[N];
      load_row_packs<N>(x, grad_y, weight, base, c, v, g, w);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        sums.x += g[j] * w[j];
        sums.y = fmaf(g[j] * w[j], (v[j] - stats.x) * stats.y, sums.y);
      }
    }
    sums = block_sum2(sums, scratch2);
    const float mean_gw = sums.x / static_cast<float>(D), mean_gw_xhat = sums.y / static_cast<float>(D);
    for (int64_t c = first; c < D; c += step) {
      float v[N], g[N], w[N];
      load_row_packs<N>(x, grad_y, weight, base, c, v, g, w);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const float xhat = (v[j] - stats.x) * stats.y;
        if (acc_w) acc_w[c + j] = fmaf(g[j], xhat, acc_w[c + j]);
        if (acc_b) acc_b[c + j] += g[j];
        v[j] = (g[j] * w[j] - mean_gw - xhat * mean_gw_xhat) * stats.y;
      }
      store_pack<N>(grad_x + base + c, v);
    }
  }
  if (acc && smem_acc) {
    float* out = partial + blockIdx.x * width;
    for (int64_t c = first; c < D; c += step)
#pragma unroll
      for (int j = 0; j < N; ++j) {
        if (acc_w) out[c + j] = acc_w[c + j];
        if (acc_b) out[c + j + (acc_w ? D : 0)] = acc_b[c + j];
      }
  }
}

}  // namespace cuda
}  // namespace minilvlm
