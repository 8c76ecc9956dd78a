// row_kernels.cuh: device code shared by the CUDA kernels of rms_norm, layer_norm, swiglu and gelu
// (csrc/cuda/<op>_kernels.cuh). No ATen, so the emulator build compiles it too.
//   Pack<T, N>, load_pack, store_pack   N elements in one 16-byte access (N = 16 / sizeof(T)), or
//                                       one element (N = 1) where a tensor is not 16-byte aligned or
//                                       its rows are not a multiple of 16 bytes
//   load_row_packs                      the packs at one column of two rows and the parameter row
//   rounded<T>(v)                       v after a round trip through T (the value a store keeps)
//   block_sum, block_sum2               sums over a block, returned to every thread
//   for_each_pack                       a grid-stride loop over a flat range in packs, then its tail
//   column_sum_kernel                   the per-block partial rows of a parameter gradient summed
//                                       over the blocks: [groups, ld] float32 -> [width] in T
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/convert.cuh"
#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

constexpr int kRowMaxThreads = 1024;     // the row kernels: one block per row
constexpr int kElementwiseThreads = 256;  // the elementwise kernels (swiglu, gelu)
constexpr unsigned kFullWarp = 0xffffffffu;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[N]) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = widen<float>(pack.v[j]);
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int j = 0; j < N; ++j) store(&pack.v[j], in[j]);
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// The pack at column c of rows a + base and b + base, and of the parameter row p (the backward
// kernels' three inputs: the saved input, grad_y, weight).
template <int N, typename T>
__device__ __forceinline__ void load_row_packs(const T* a, const T* b, const T* p, int64_t base, int64_t c,
                                               float (&va)[N], float (&vb)[N], float (&vp)[N]) {
  load_pack<N>(a + base + c, va);
  load_pack<N>(b + base + c, vb);
  load_pack<N>(p + c, vp);
}

template <typename T>
__device__ __forceinline__ float rounded(float v) {
  T t;
  store(&t, v);
  return widen<float>(t);
}

// fn(i, width) for a flat range [0, n): grid-stride over the whole packs (width an
// std::integral_constant<int, N>, i a multiple of N), then the last n % N elements one at a time
// (width 1). The body loads and stores with load_pack<width> and store_pack<width>.
template <int N, typename Fn>
__device__ __forceinline__ void for_each_pack(int64_t n, Fn&& fn) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / N;
  for (int64_t p = start; p < packs; p += stride) fn(p * N, std::integral_constant<int, N>{});
  for (int64_t i = packs * N + start; i < n; i += stride) fn(i, std::integral_constant<int, 1>{});
}

__device__ __forceinline__ float warp_sum_all(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// The sum of v over the block (blockDim.x a multiple of 32), returned to every thread; scratch is a
// __shared__ float[32]. The first barrier lets a block call it again with the same scratch.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum_all(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum_all(lane < warps ? scratch[lane] : 0.0f);
}

// Two sums at once, each added in exactly block_sum's order (so a row's statistic does not depend
// on which of the two a kernel used). scratch is a __shared__ float2[32].
__device__ __forceinline__ float2 block_sum2(float2 v, float2* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v.x = warp_sum_all(v.x);
  v.y = warp_sum_all(v.y);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const float2 mine = lane < warps ? scratch[lane] : make_float2(0.0f, 0.0f);
  return make_float2(warp_sum_all(mine.x), warp_sum_all(mine.y));
}

// out[c] = sum over g < groups of partial[g * ld + c], for c < width; one thread per column, so
// the reads of a warp are coalesced and the order of the sum is fixed.
template <typename T>
__global__ void __launch_bounds__(256)
    column_sum_kernel(const float* __restrict__ partial, int64_t groups, int64_t ld, int64_t width, T* __restrict__ out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= width) return;
  float total = 0.0f;
  for (int64_t g = 0; g < groups; ++g) total += partial[g * ld + c];
  store(out + c, total);
}

}  // namespace cuda
}  // namespace minilvlm
