// rms_norm_kernels.cuh: the CUDA kernels of minilvlm::rms_norm and rms_norm_backward (the math is in
// common/rms_norm_host.h). Device code only, no ATen: nvcc compiles it into csrc/cuda/rms_norm.cu
// and g++ into the emulator build (csrc/emu/rms_norm_emu.cpp), both through cuda/rms_norm_launch.h.
//
// One block per row (grid-stride over rows); threads take N-element packs of the row, 16-byte
// accesses where the launch code found them aligned (cuda/row_kernels.cuh). A row is read twice:
// once for its sum of squares (a block reduction) and once to write; the second read is served by
// L1/L2, so HBM sees each element once. The forward with a residual recomputes s = x + residual
// in the second pass rather than re-reading the s it wrote (stores bypass L1).
//   forward   reads x (+ residual), writes y (+ s)              bf16: 4 (8 with residual) B/element
//   backward  reads grad_y, s (+ grad_s), writes grad_s_total   bf16: 6 (8) B/element
// The backward's weight gradient: each block adds grad_y * xhat for its rows into a float32 row of
// its own (shared memory when it fits, else its row of `partial`) and writes it to partial[block];
// column_sum_kernel then sums the blocks' rows. Each thread owns the same columns in every row,
// so the accumulator needs no barrier.
#pragma once

#include <cstdint>

#include "cuda/convert.cuh"
#include "cuda/launch.h"
#include "cuda/row_kernels.cuh"

namespace minilvlm {
namespace cuda {

struct RmsArgs {
  int64_t rows, dim;
  float eps;
};

// One pack of the residual stream s: x + residual rounded to T (the value the forward stores), or x.
template <bool kResidual, int N, typename T>
__device__ __forceinline__ void load_stream(const T* x, const T* residual, int64_t at, float (&v)[N]) {
  load_pack<N>(x + at, v);
  if constexpr (kResidual) {
    float r[N];
    load_pack<N>(residual + at, r);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] = rounded<T>(v[j] + r[j]);
  }
}

template <typename T, int N, bool kResidual>
__global__ void __launch_bounds__(kRowMaxThreads)
    rms_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ residual, const T* __restrict__ weight,
                            T* __restrict__ y, T* __restrict__ s, const RmsArgs args) {
  __shared__ float scratch[32];
  const int64_t D = args.dim, step = static_cast<int64_t>(blockDim.x) * N;
  for (int64_t row = blockIdx.x; row < args.rows; row += gridDim.x) {
    const int64_t base = row * D;
    float squares = 0.0f;
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < D; c += step) {
      float v[N];
      load_stream<kResidual, N>(x, residual, base + c, v);
      if constexpr (kResidual) store_pack<N>(s + base + c, v);
#pragma unroll
      for (int j = 0; j < N; ++j) squares = fmaf(v[j], v[j], squares);
    }
    const float rstd = rsqrtf(block_sum(squares, scratch) / static_cast<float>(D) + args.eps);
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < D; c += step) {
      float v[N], w[N];
      load_stream<kResidual, N>(x, residual, base + c, v);
      load_pack<N>(weight + c, w);
#pragma unroll
      for (int j = 0; j < N; ++j) v[j] = w[j] * rounded<T>(v[j] * rstd);  // to x's dtype, then the weight
      store_pack<N>(y + base + c, v);
    }
  }
}

// partial: [gridDim.x, D] float32, written whole when weight_grad; smem_acc: accumulate in dynamic
// shared memory (D floats) instead of in the block's row of partial.
template <typename T, int N, bool kGradS>
__global__ void __launch_bounds__(kRowMaxThreads)
    rms_norm_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ grad_s, const T* __restrict__ s,
                             const T* __restrict__ weight, T* __restrict__ grad_in, float* __restrict__ partial,
                             const RmsArgs args, bool weight_grad, bool smem_acc) {
  MINILVLM_DYNAMIC_SMEM(float, smem);
  __shared__ float2 scratch[32];
  const int64_t D = args.dim, step = static_cast<int64_t>(blockDim.x) * N;
  const int64_t first = static_cast<int64_t>(threadIdx.x) * N;
  float* acc = weight_grad ? (smem_acc ? smem : partial + blockIdx.x * D) : nullptr;
  if (acc)
    for (int64_t c = first; c < D; c += step)
#pragma unroll
      for (int j = 0; j < N; ++j) acc[c + j] = 0.0f;
  for (int64_t row = blockIdx.x; row < args.rows; row += gridDim.x) {
    const int64_t base = row * D;
    float2 sums = make_float2(0.0f, 0.0f);  // sum s^2, sum grad_y * weight * s
    for (int64_t c = first; c < D; c += step) {
      float v[N], g[N], w[N];
      load_row_packs<N>(s, grad_y, weight, base, c, v, g, w);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        sums.x = fmaf(v[j], v[j], sums.x);
        sums.y = fmaf(g[j] * w[j], v[j], sums.y);
      }
    }
    sums = block_sum2(sums, scratch);
    const float rstd = rsqrtf(sums.x / static_cast<float>(D) + args.eps);
    const float coef = sums.y * rstd * rstd / static_cast<float>(D);
    for (int64_t c = first; c < D; c += step) {
      float v[N], g[N], w[N], out[N];
      load_row_packs<N>(s, grad_y, weight, base, c, v, g, w);
      if constexpr (kGradS) load_pack<N>(grad_s + base + c, out);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const float grad = (g[j] * w[j] - v[j] * coef) * rstd;
        out[j] = kGradS ? out[j] + grad : grad;
        if (acc) acc[c + j] = fmaf(g[j], rounded<T>(v[j] * rstd), acc[c + j]);
      }
      store_pack<N>(grad_in + base + c, out);
    }
  }
  if (acc && smem_acc)
    for (int64_t c = first; c < D; c += step)
#pragma unroll
      for (int j = 0; j < N; ++j) partial[blockIdx.x * D + c + j] = acc[c + j];
}

}  // namespace cuda
}  // namespace minilvlm
