// planted_bugs.cuh: deliberately broken CUDA kernels, written the way csrc/cuda/*_kernels.cuh are
// (dynamic shared memory through MINILVLM_DYNAMIC_SMEM, raw pointers, warp shuffles, grid-stride
// loops), one per class of bug the emulator's checks must name. Each is a template on kBug: with
// kBug = false it is the correct kernel and must pass every check with the right result; with
// kBug = true it carries the bug. tests/emu/planted_bugs.cpp wraps them as
// torch.ops.minilvlm_emu.planted_*; tests/emu/test_planted_bugs.py says which check must fire.
// nvcc compiles them too (planted_bugs_check.cu, in cuda_check), so they stay valid CUDA.
#pragma once

#include <cstdint>

#include "cuda/launch.h"

namespace minilvlm {
namespace planted {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileRows = 16;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// out[t, j] = x[t, :] . w[j, :] + w[j, :] . 1 ... in two phases, as mm_adapter's forward: each warp
// forms the row dot products of its tokens into shared memory, then every thread reads all of
// them. Bug: the __syncthreads between the two phases is missing (a read-after-write race).
// Grid: one block per kTileRows tokens; w is [r, D], x [T, D], out [T, r]; dynamic smem kTileRows*r floats.
template <bool kBug>
__global__ void __launch_bounds__(kThreads)
    missing_barrier_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out,
                           int T, int D, int r) {
  MINILVLM_DYNAMIC_SMEM(float, dots);
  const int t0 = blockIdx.x * kTileRows;
  const int nt = T - t0 < kTileRows ? T - t0 : kTileRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < nt; t += kWarps) {
    for (int j = 0; j < r; ++j) {
      float acc = 0.0f;
      for (int i = lane; i < D; i += 32) acc = fmaf(x[(t0 + t) * D + i], w[j * D + i], acc);
      acc = warp_sum(acc);
      if (lane == 0) dots[t * r + j] = acc;
    }
  }
  if (!kBug) __syncthreads();
  for (int e = threadIdx.x; e < nt * r; e += kThreads) out[t0 * r + e] = dots[e];
}

// One warp per row: y[j] = rows[j, :] . v over n columns. Bug: the lane loop is rounded up to whole
// warps and the excess masked to zero after the load, so the last row reads up to 31 floats past
// the end of `rows` (harmless in value, out of bounds in memory: what ASan found in mm_adapter).
template <bool kBug>
__global__ void __launch_bounds__(kThreads)
    masked_tail_kernel(const float* __restrict__ rows, const float* __restrict__ v, float* __restrict__ y, int count,
                       int n) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int end = kBug ? (n + 31) / 32 * 32 : n;
  for (int j = blockIdx.x * kWarps + warp; j < count; j += gridDim.x * kWarps) {
    float acc = 0.0f;
    for (int i = lane; i < end; i += 32) {
      const float a = __ldg(rows + static_cast<int64_t>(j) * n + i);
      acc = fmaf(a, i < n ? v[i] : 0.0f, acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[j] = acc;
  }
}

// An element-wise SGD step p -= lr * g with a grid-stride loop. Bug: the stride is blockDim.x
// instead of gridDim.x * blockDim.x, so every block walks on over the elements of the blocks after
// it (and they update some elements twice): a race between blocks in global memory.
template <bool kBug>
__global__ void __launch_bounds__(kThreads)
    wrong_stride_kernel(float* __restrict__ p, const float* __restrict__ g, float lr, int64_t n) {
  const int64_t stride = kBug ? static_cast<int64_t>(blockDim.x) : static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] -= lr * g[i];
}

// Per-block sums: warp sums into shared memory, then the first kWarps lanes reduce those with a
// mask of kWarps lanes. Bug: the final reduction starts at offset 16, as a full-warp reduction
// does, so lane 0 reads lane 16, which is not in the mask (an undefined value in CUDA).
template <bool kBug>
__global__ void __launch_bounds__(kThreads)
    wrong_shuffle_offset_kernel(const float* __restrict__ x, float* __restrict__ partial, int n) {
  __shared__ float warp_sums[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float acc = 0.0f;
  for (int i = blockIdx.x * kThreads + threadIdx.x; i < n; i += gridDim.x * kThreads) acc += x[i];
  acc = warp_sum(acc);
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (threadIdx.x < kWarps) {
    constexpr unsigned kMask = (1u << kWarps) - 1u;
    float v = warp_sums[threadIdx.x];
    for (int offset = kBug ? 16 : kWarps / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kMask, v, offset);
    if (threadIdx.x == 0) partial[blockIdx.x] = v;
  }
}

// out = a * x + y[mirror] through a shared-memory stage (mirrored within each block's chunk). Bug:
// the barrier sits inside the tail check, so in the last block the threads past n never reach it.
template <bool kBug>
__global__ void __launch_bounds__(kThreads)
    divergent_barrier_kernel(float a, const float* __restrict__ x, float* __restrict__ out, int n) {
  MINILVLM_DYNAMIC_SMEM(float, stage);
  const int base = blockIdx.x * kThreads, t = threadIdx.x;
  const int count = n - base < kThreads ? n - base : kThreads;
  if (kBug) {
    if (t < count) {
      stage[t] = x[base + t];
      __syncthreads();
      out[base + t] = a * stage[count - 1 - t];
    }
    return;
  }
  if (t < count) stage[t] = x[base + t];
  __syncthreads();
  if (t < count) out[base + t] = a * stage[count - 1 - t];
}

// Per-warp sums of x, one value per warp. Bug: the threads past n return before the full-mask
// shuffle of warp_sum, so its mask names lanes that have exited.
template <bool kBug>
__global__ void __launch_bounds__(kThreads)
    inactive_lane_shuffle_kernel(const float* __restrict__ x, float* __restrict__ sums, int n) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (kBug && i >= n) return;
  const float v = warp_sum(i < n ? x[i] : 0.0f);
  if (threadIdx.x % 32 == 0) sums[i / 32] = v;
}

// Each warp rotates its values by one lane through shared memory: out[i] is x at the next lane of
// the same warp (lane 31 takes lane 0's). Bug: no __syncwarp between a lane's store and its read
// of the next lane's slot. Lanes of a warp do not run in lockstep (Volta and later), so a lane can
// read its neighbour's slot before the neighbour has written it: a race within one warp.
template <bool kBug>
__global__ void __launch_bounds__(kThreads)
    missing_syncwarp_kernel(const float* __restrict__ x, float* __restrict__ out, int n) {
  __shared__ float slots[kThreads];
  const int i = blockIdx.x * kThreads + threadIdx.x;
  const int lane = threadIdx.x % 32, next = threadIdx.x - lane + (lane + 1) % 32;
  slots[threadIdx.x] = i < n ? x[i] : 0.0f;
  if (!kBug) __syncwarp();
  const float v = slots[next];
  if (i < n) out[i] = v;
}

}  // namespace planted
}  // namespace minilvlm
