// linear_cross_entropy_kernels.cuh: the two CUDA kernels of the fused softmax pass of
// minilvlm::linear_cross_entropy. Device code only, no ATen: nvcc compiles it into
// csrc/cuda/linear_cross_entropy.cu and g++ into the emulator build
// (csrc/emu/linear_cross_entropy_emu.cpp), both through cuda/linear_cross_entropy_launch.h.
//
//   lce_row_stats_kernel  one block per row of the chunk (grid-stride): the block's max of the
//                         row, then its sum of exp(x - max), each reduced over the block (warp
//                         shuffles, then the warps' values in order); thread 0 writes
//                         lse = max + log(sum) and the row's loss lse - x[target], and traps on a
//                         target outside [0, V) (no read back to the host).
//   lce_grad_kernel       a 2-D grid: blockIdx.x picks 256 columns, blockIdx.y a group of rows;
//                         each thread walks its column down the group's rows, overwrites the logit
//                         with g = exp(x - lse) - [col == target] (fp32, stored in the logits'
//                         dtype; a warp's accesses are coalesced) and sums g, which it writes to
//                         the group's row of grad_bias partials. The partials are summed by ATen
//                         in group order, so grad_bias is the same on every run.
// The chunk is read twice by the first kernel (the second read mostly from L2) and once more and
// written once by the second.
#pragma once

#include <cstdint>

#include "cuda/convert.cuh"
#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

constexpr int kLceThreads = 256;
constexpr int kLceWarps = kLceThreads / 32;

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// The value of op over the block, in every thread. Every warp reduces its lanes, then every thread
// combines the warps' values in warp order (the same order in every thread).
template <typename Op>
__device__ __forceinline__ float lce_block_reduce(float v, Op op, float* warp_values) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  if ((threadIdx.x & 31) == 0) warp_values[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = warp_values[0];
  for (int w = 1; w < kLceWarps; ++w) total = op(total, warp_values[w]);
  __syncthreads();  // warp_values is reused by the next reduction
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kLceThreads)
    lce_row_stats_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets, float* __restrict__ lse,
                         float* __restrict__ row_loss, int64_t rows, int64_t vocab) {
  __shared__ float warp_values[kLceWarps];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* x = logits + r * vocab;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < vocab; c += kLceThreads) m = fmaxf(m, widen<float>(x[c]));
    m = lce_block_reduce(m, MaxOp(), warp_values);
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < vocab; c += kLceThreads) s += expf(widen<float>(x[c]) - m);
    s = lce_block_reduce(s, SumOp(), warp_values);
    if (threadIdx.x == 0) {
      const int64_t t = targets[r];
      if (t < 0 || t >= vocab) __trap();  // a label outside the vocabulary
      const float row_lse = m + logf(s);
      lse[r] = row_lse;
      row_loss[r] = row_lse - widen<float>(x[t]);
    }
  }
}

// grad_bias_partials is null when no bias gradient is wanted; otherwise [gridDim.y, vocab].
template <typename T>
__global__ void __launch_bounds__(kLceThreads)
    lce_grad_kernel(T* __restrict__ logits, const int64_t* __restrict__ targets, const float* __restrict__ lse,
                    float* __restrict__ grad_bias_partials, int64_t rows, int64_t vocab, int64_t rows_per_group) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLceThreads + threadIdx.x;
  if (c >= vocab) return;  // no barrier below
  const int64_t r0 = blockIdx.y * rows_per_group;
  const int64_t r1 = r0 + rows_per_group < rows ? r0 + rows_per_group : rows;
  float sum = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    T* x = logits + r * vocab + c;
    const float g = expf(widen<float>(*x) - lse[r]) - (targets[r] == c ? 1.0f : 0.0f);
    store(x, g);
    sum += g;
  }
  if (grad_bias_partials != nullptr) grad_bias_partials[blockIdx.y * vocab + c] = sum;
}

}  // namespace cuda
}  // namespace minilvlm
