// mm_adapter_kernels.cuh: the CUDA kernels of minilvlm::mm_adapter and mm_adapter_backward.
// Device code only, no ATen: nvcc compiles it into csrc/cuda/mm_adapter.cu and g++ into the
// emulator build (csrc/emu/mm_adapter_emu.cpp), both through cuda/mm_adapter_launch.h, so the code
// under test is the code that ships.
//
// The host has folded the router into per-sample UsT [B, rg, D] = s * sum_i w_i U_i (transposed)
// and cs [B, D] = s * sum_i w_i c_i (common/mm_adapter_host.h). Tiles are kMmTileTokens tokens of
// one sample. The forward's grid is (tiles, B), one block per tile; the backward's is (blocks per
// sample, B), bounded by the GPU's size, and block (i, b) takes the tiles i, i + gridDim.x, ... of
// sample b. For each tile
//   phase 1  each warp takes whole tokens and forms their r dot products (h = A x + b_A; in the
//            backward also dh = UsT dy per group) with lane-strided loads and __shfl_xor_sync
//            reductions; the results go to shared memory;
//   phase 2  threads own channels d and walk the tile's tokens: the forward writes
//            out = x + cs + UsT^T h, the backward writes dx = dy + A^T dh and adds the tile's
//            dA += dh x^T, db_A += dh, G += h dy^T, S += dy to its block's own slot of a workspace.
// The backward is deterministic: no float atomics. Pass 1 (mm_adapter_backward_kernel) leaves one
// partial sum per block, accumulated over its tiles in a fixed order; pass 2 (mm_sum_slots_kernel)
// adds the slots in slot order. The result depends on the grid (the GPU's SM count), never on
// the order in which blocks or threads run.
// UsT and cs are read through the read-only cache: at D = 4096 they take 80 KB per sample,
// more than the default 48 KB of shared memory.
#pragma once

#include <cstdint>

#include "cuda/convert.cuh"
#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

constexpr int kMmThreads = 256;
constexpr int kMmWarps = kMmThreads / 32;
constexpr int kMmTileTokens = 16;
constexpr int kMmChunk = 8;  // dot products per pass over a row: the register array size

struct MmDims {
  int64_t T, D;
  int r, rg, Dg, groups;
};

// A token element as float: fp32 tokens through the read-only cache, bf16/fp16 tokens as plain loads.
__device__ __forceinline__ float load_token(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_token(const __nv_bfloat16* p) { return widen<float>(*p); }
__device__ __forceinline__ float load_token(const __half* p) { return widen<float>(*p); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// out[j] = rows[j*ld : j*ld+n] . v[0:n] for j < count, computed by one warp; every lane gets
// the results. kMmChunk rows per pass over v.
template <typename T>
__device__ __forceinline__ void warp_dot_rows(const float* __restrict__ rows, int64_t ld, const T* __restrict__ v,
                                              int64_t n, int count, float* out, int lane) {
  for (int j0 = 0; j0 < count; j0 += kMmChunk) {
    float acc[kMmChunk];
#pragma unroll
    for (int j = 0; j < kMmChunk; ++j) acc[j] = 0.0f;
    for (int64_t i = lane; i < n; i += 32) {
      const float vi = load_token(v + i);
#pragma unroll
      for (int j = 0; j < kMmChunk; ++j)
        if (j0 + j < count) acc[j] = fmaf(__ldg(rows + (j0 + j) * ld + i), vi, acc[j]);
    }
#pragma unroll
    for (int j = 0; j < kMmChunk; ++j) {
      const float total = warp_sum(acc[j]);
      if (lane == 0 && j0 + j < count) out[j0 + j] = total;
    }
  }
}

__device__ __forceinline__ int mm_tile_tokens(const MmDims& dims, int64_t t0) {
  return static_cast<int>(dims.T - t0 < kMmTileTokens ? dims.T - t0 : kMmTileTokens);
}

template <typename T>
__global__ void __launch_bounds__(kMmThreads)
    mm_adapter_forward_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ A,
                              const float* __restrict__ bA, const float* __restrict__ UsT,
                              const float* __restrict__ cs, MmDims dims) {
  MINILVLM_DYNAMIC_SMEM(float, h);  // [kMmTileTokens, r]
  const int64_t b = blockIdx.y, t0 = static_cast<int64_t>(blockIdx.x) * kMmTileTokens;
  const int nt = mm_tile_tokens(dims, t0);
  const int64_t D = dims.D;
  const T* xs = x + (b * dims.T + t0) * D;
  T* os = out + (b * dims.T + t0) * D;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < nt; t += kMmWarps) {
    warp_dot_rows(A, D, xs + t * D, D, dims.r, h + t * dims.r, lane);
    __syncwarp();
    for (int k = lane; k < dims.r; k += 32) h[t * dims.r + k] += bA[k];
  }
  __syncthreads();
  const float* u = UsT + b * dims.rg * D;
  for (int64_t d = threadIdx.x; d < D; d += kMmThreads) {
    const int hg = static_cast<int>(d / dims.Dg) * dims.rg;
    const float c = __ldg(cs + b * D + d);
    for (int t = 0; t < nt; ++t) {
      float v = c;
      for (int j = 0; j < dims.rg; ++j) v = fmaf(__ldg(u + j * D + d), h[t * dims.r + hg + j], v);
      store(os + t * D + d, load_token(xs + t * D + d) + v);
    }
  }
}

// *p = v for a block's first tile, *p += v after: a slot of the workspace that only this thread writes.
__device__ __forceinline__ void mm_accumulate(float* p, float v, bool first) { *p = first ? v : *p + v; }

// Pass 1 of the backward. Workspace slots, written (not added to) by the block's first tile:
//   dA_part [gridDim.y * gridDim.x][r*D + r]  per block: dA [r, D] then db_A [r]
//   GS_part [gridDim.x][B][rg*D + D]           per block: G_b [rg, D] then S_b [D] of its sample
template <typename T>
__global__ void __launch_bounds__(kMmThreads)
    mm_adapter_backward_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                               const float* __restrict__ A, const float* __restrict__ bA,
                               const float* __restrict__ UsT, float* __restrict__ dA_part,
                               float* __restrict__ GS_part, MmDims dims) {
  MINILVLM_DYNAMIC_SMEM(float, h);  // [kMmTileTokens, r], then dh [kMmTileTokens, r]
  const int r = dims.r, rg = dims.rg;
  float* dh = h + kMmTileTokens * r;
  const int64_t b = blockIdx.y, D = dims.D;
  const int64_t tiles = (dims.T + kMmTileTokens - 1) / kMmTileTokens;
  const float* u = UsT + b * rg * D;
  float* dA_s = dA_part + (b * gridDim.x + blockIdx.x) * (r * D + r);
  float* G_s = GS_part + (static_cast<int64_t>(blockIdx.x) * gridDim.y + b) * (rg * D + D);
  float* S_s = G_s + rg * D;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const bool first = tile == blockIdx.x;
    const int64_t t0 = tile * kMmTileTokens, offset = (b * dims.T + t0) * D;
    const int nt = mm_tile_tokens(dims, t0);
    const T* xs = x + offset;
    const T* gs = dy + offset;
    T* dxs = dx + offset;
    for (int t = warp; t < nt; t += kMmWarps) {
      warp_dot_rows(A, D, xs + t * D, D, r, h + t * r, lane);
      for (int g = 0; g < dims.groups; ++g)
        warp_dot_rows(u + g * dims.Dg, D, gs + t * D + g * dims.Dg, dims.Dg, rg, dh + t * r + g * rg, lane);
      __syncwarp();
      for (int k = lane; k < r; k += 32) h[t * r + k] += bA[k];
    }
    __syncthreads();
    for (int k = threadIdx.x; k < r; k += kMmThreads) {
      float total = 0.0f;
      for (int t = 0; t < nt; ++t) total += dh[t * r + k];
      mm_accumulate(dA_s + r * D + k, total, first);
    }
    for (int64_t d = threadIdx.x; d < D; d += kMmThreads) {
      const int hg = static_cast<int>(d / dims.Dg) * rg;
      float s = 0.0f;
      for (int t = 0; t < nt; ++t) {  // dx = dy + A^T dh
        const float gd = load_token(gs + t * D + d);
        float v = gd;
        for (int k = 0; k < r; ++k) v = fmaf(__ldg(A + k * D + d), dh[t * r + k], v);
        store(dxs + t * D + d, v);
        s += gd;
      }
      mm_accumulate(S_s + d, s, first);
      for (int k0 = 0; k0 < r; k0 += kMmChunk) {  // dA += dh x^T
        float acc[kMmChunk];
#pragma unroll
        for (int j = 0; j < kMmChunk; ++j) acc[j] = 0.0f;
        for (int t = 0; t < nt; ++t) {
          const float xd = load_token(xs + t * D + d);
#pragma unroll
          for (int j = 0; j < kMmChunk; ++j)
            if (k0 + j < r) acc[j] = fmaf(dh[t * r + k0 + j], xd, acc[j]);
        }
#pragma unroll
        for (int j = 0; j < kMmChunk; ++j)
          if (k0 + j < r) mm_accumulate(dA_s + (k0 + j) * D + d, acc[j], first);
      }
      for (int j0 = 0; j0 < rg; j0 += kMmChunk) {  // G += h dy^T, this channel's group
        float acc[kMmChunk];
#pragma unroll
        for (int j = 0; j < kMmChunk; ++j) acc[j] = 0.0f;
        for (int t = 0; t < nt; ++t) {
          const float gd = load_token(gs + t * D + d);
#pragma unroll
          for (int j = 0; j < kMmChunk; ++j)
            if (j0 + j < rg) acc[j] = fmaf(h[t * r + hg + j0 + j], gd, acc[j]);
        }
#pragma unroll
        for (int j = 0; j < kMmChunk; ++j)
          if (j0 + j < rg) mm_accumulate(G_s + (j0 + j) * D + d, acc[j], first);
      }
    }
    __syncthreads();  // the next tile overwrites h and dh
  }
}

// Pass 2: out[e] = sum over s < slots of part[s * n + e], in slot order (grid-stride over e).
static __global__ void __launch_bounds__(kMmThreads)
    mm_sum_slots_kernel(const float* __restrict__ part, float* __restrict__ out, int64_t slots, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    float total = 0.0f;
    for (int64_t s = 0; s < slots; ++s) total += part[s * n + e];
    out[e] = total;
  }
}

}  // namespace cuda
}  // namespace minilvlm
