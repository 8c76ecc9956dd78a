// mm_adapter_kernels.cuh: the CUDA kernels of minilvlm::mm_adapter and mm_adapter_backward.
// Device code only, no ATen: nvcc compiles it into csrc/cuda/mm_adapter.cu and g++ into the
// emulator build (csrc/emu/mm_adapter_emu.cpp), both through cuda/mm_adapter_launch.h, so the code
// under test is the code that ships.
//
// The host has folded the router into per-sample UsT [B, rg, D] = s * sum_i w_i U_i (transposed)
// and cs [B, D] = s * sum_i w_i c_i (common/mm_adapter_host.h). Tiles are consecutive tokens of
// one sample. The forward's grid is (tiles, B), one block per tile of `tile` <= kMmTileTokens
// tokens, the tile sized by the host from B*T; the backward's is (blocks per sample, B), bounded by
// the GPU's size, and block (i, b) takes the tiles i, i + gridDim.x, ... (kMmTileTokens each) of
// sample b. For each tile
//   phase 1  the r dot products of each token (h = A x + b_A; in the backward also dh = UsT dy per
//            group), reduced with __shfl_xor_sync into shared memory. Both split the channels
//            among all threads and take the tile's tokens kMmDotTokens at a time, so one load of
//            A (or of UsT) serves several tokens (mm_tile_dots);
//   dropout  h (after b_A) and, in the backward, dh are masked and scaled per entry by
//            dropout_keep(seed, offset, flat index in h [B,T,r]) (common/philox.h): the backward
//            regenerates the forward's mask in a pass of its own (mm_factor_bias_kernel);
//   phase 2  threads own channels d and walk the tile's tokens: the forward writes
//            out = x + cs + UsT^T h, the backward writes dx = dy + A^T dh (A's column loaded once
//            per tile, its tokens' sums in registers) and adds the tile's
//            dA += dh x^T, db_A += dh, G += h dy^T, S += dy to its block's own slot of a workspace.
// The backward is deterministic: no float atomics. Pass 1 (mm_adapter_backward_kernel) leaves one
// partial sum per block, accumulated over its tiles in a fixed order; pass 2 (mm_sum_slots_kernel)
// adds the slots in slot order. The result depends on the grid (the GPU's SM count), never on
// the order in which blocks or threads run.
// UsT and cs are read through the read-only cache: at D = 4096 they take 80 KB per sample,
// more than the default 48 KB of shared memory.
#pragma once

#include <cstdint>

#include "common/philox.h"
#include "cuda/convert.cuh"
#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

constexpr int kMmThreads = 256;
constexpr int kMmWarps = kMmThreads / 32;
constexpr int kMmTileTokens = 16;
constexpr int kMmChunk = 8;  // dot products per pass over a row: the register array size
constexpr int kMmDotTokens = 4;  // tokens per forward register block: each load of A feeds four tokens
// The backward's register budget: two blocks per SM, 128 registers a thread. Under a bare
// __launch_bounds__ ptxas budgeted 64 and spilled the fp32 kernel once dropout came in.
constexpr int kMmBackwardMinBlocks = 2;

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

__device__ __forceinline__ int mm_tile_tokens(const MmDims& dims, int64_t t0, int tile) {
  return static_cast<int>(dims.T - t0 < tile ? dims.T - t0 : tile);
}

// Dropout on one entry of h (or of its gradient): index is the entry's flat index in h [B, T, r].
__device__ __forceinline__ float mm_drop(float v, const DropoutKeys& drop, uint64_t index) {
  if (!drop.active) return v;
  return dropout_keep(drop, index) ? v * static_cast<float>(drop.scale) : 0.0f;
}

// Phase 1 for a tile of nt <= kMmTileTokens tokens: part[w][t][col0 + k] = the dot product of row k
// of `rows` (count rows, `ld` apart) with token t's first n elements (tokens D apart), over the
// channels i = 32 w + lane (mod kMmThreads). Every thread takes the same channels of all the tile's
// tokens, so each element of `rows` is loaded once per kMmDotTokens tokens (one register block of
// kMmChunk rows by kMmDotTokens tokens) rather than once per token. The forward and the backward
// both form h = A x this way (so the backward's h is the forward's, bit for bit); the backward also
// forms dh = UsT dy group by group (rows and tokens offset to the group's channels).
template <typename T>
__device__ __forceinline__ void mm_tile_dots(const float* __restrict__ rows, int64_t ld, const T* __restrict__ xs,
                                             int64_t D, int64_t n, int count, int nt, float* part, int col0, int r) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j0 = 0; j0 < count; j0 += kMmChunk) {
    for (int t0 = 0; t0 < nt; t0 += kMmDotTokens) {
      float acc[kMmChunk][kMmDotTokens];
#pragma unroll
      for (int j = 0; j < kMmChunk; ++j)
#pragma unroll
        for (int t = 0; t < kMmDotTokens; ++t) acc[j][t] = 0.0f;
      for (int64_t i = threadIdx.x; i < n; i += kMmThreads) {
        float xv[kMmDotTokens];
#pragma unroll
        for (int t = 0; t < kMmDotTokens; ++t) xv[t] = t0 + t < nt ? load_token(xs + (t0 + t) * D + i) : 0.0f;
#pragma unroll
        for (int j = 0; j < kMmChunk; ++j) {
          const float a = j0 + j < count ? __ldg(rows + (j0 + j) * ld + i) : 0.0f;
#pragma unroll
          for (int t = 0; t < kMmDotTokens; ++t) acc[j][t] = fmaf(a, xv[t], acc[j][t]);
        }
      }
#pragma unroll
      for (int j = 0; j < kMmChunk; ++j)
#pragma unroll
        for (int t = 0; t < kMmDotTokens; ++t) {
          const float total = warp_sum(acc[j][t]);
          if (lane == 0 && j0 + j < count && t0 + t < nt)
            part[(warp * kMmTileTokens + t0 + t) * r + col0 + j0 + j] = total;
        }
    }
  }
}

// start + the warps' partial dots of entry e (part as mm_tile_dots leaves it), added in warp order.
__device__ __forceinline__ float mm_warp_total(const float* part, int e, int r, float start) {
  for (int w = 0; w < kMmWarps; ++w) start += part[w * kMmTileTokens * r + e];
  return start;
}

// The forward: one block per tile of `tile` tokens of one sample (tile <= kMmTileTokens, chosen by the
// host from B*T so that the grid covers the GPU several times over, cuda/mm_adapter_launch.h).
template <typename T>
__global__ void __launch_bounds__(kMmThreads)
    mm_adapter_forward_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ A,
                              const float* __restrict__ bA, const float* __restrict__ UsT,
                              const float* __restrict__ cs, MmDims dims, int tile, DropoutKeys drop) {
  MINILVLM_DYNAMIC_SMEM(float, h);  // h [kMmTileTokens, r], then the partial dots [kMmWarps, kMmTileTokens, r]
  const int r = dims.r;
  float* part = h + kMmTileTokens * r;
  const int64_t b = blockIdx.y, t0 = static_cast<int64_t>(blockIdx.x) * tile;
  const int nt = mm_tile_tokens(dims, t0, tile);
  const int64_t D = dims.D;
  const T* xs = x + (b * dims.T + t0) * D;
  T* os = out + (b * dims.T + t0) * D;
  mm_tile_dots(A, D, xs, D, D, r, nt, part, 0, r);
  __syncthreads();
  for (int e = threadIdx.x; e < nt * r; e += kMmThreads) {  // h = the warps' partials, in warp order, + b_A
    const float v = mm_warp_total(part, e, r, bA[e % r]);
    h[e] = mm_drop(v, drop, static_cast<uint64_t>(b * dims.T + t0) * r + e);
  }
  __syncthreads();
  const float* u = UsT + b * dims.rg * D;
  for (int64_t d = threadIdx.x; d < D; d += kMmThreads) {
    const int hg = static_cast<int>(d / dims.Dg) * dims.rg;
    const float c = __ldg(cs + b * D + d);
    for (int t = 0; t < nt; ++t) {
      float v = c;
      for (int j = 0; j < dims.rg; ++j) v = fmaf(__ldg(u + j * D + d), h[t * r + hg + j], v);
      store(os + t * D + d, load_token(xs + t * D + d) + v);
    }
  }
}

// *p = v for a block's first tile, *p += v after: a slot of the workspace that only this thread writes.
__device__ __forceinline__ void mm_accumulate(float* p, float v, bool first) { *p = first ? v : *p + v; }

// Pass 1 of the backward; factor_bias holds (f, f b_A) per entry of h (mm_factor_bias_kernel).
// Workspace slots, written (not added to) by the block's first tile:
//   dA_part [gridDim.y * gridDim.x][r*D + r]  per block: dA [r, D] then db_A [r]
//   GS_part [gridDim.x][B][rg*D + D]           per block: G_b [rg, D] then S_b [D] of its sample
template <typename T>
__global__ void __launch_bounds__(kMmThreads, kMmBackwardMinBlocks)
    mm_adapter_backward_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                               const float* __restrict__ A, const float* __restrict__ factor_bias,
                               const float* __restrict__ UsT, float* __restrict__ dA_part,
                               float* __restrict__ GS_part, MmDims dims) {
  MINILVLM_DYNAMIC_SMEM(float, h);  // h [kMmTileTokens, r], dh [kMmTileTokens, r], partials [kMmWarps, kMmTileTokens, r]
  const int r = dims.r, rg = dims.rg;
  float* dh = h + kMmTileTokens * r;
  float* part = dh + kMmTileTokens * r;
  const int64_t b = blockIdx.y, D = dims.D;
  const int64_t tiles = (dims.T + kMmTileTokens - 1) / kMmTileTokens;
  const float* u = UsT + b * rg * D;
  float* dA_s = dA_part + (b * gridDim.x + blockIdx.x) * (r * D + r);
  float* G_s = GS_part + (static_cast<int64_t>(blockIdx.x) * gridDim.y + b) * (rg * D + D);
  float* S_s = G_s + rg * D;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const bool first = tile == blockIdx.x;
    const int64_t t0 = tile * kMmTileTokens, offset = (b * dims.T + t0) * D;
    const int nt = mm_tile_tokens(dims, t0, kMmTileTokens);
    const T* xs = x + offset;
    const T* gs = dy + offset;
    T* dxs = dx + offset;
    const float* fb = factor_bias + 2 * (b * dims.T + t0) * r;  // pairs (f, f b_A) per entry of the tile's h
    mm_tile_dots(A, D, xs, D, D, r, nt, part, 0, r);  // h = A x, each load of A serving several tokens
    __syncthreads();
    for (int e = threadIdx.x; e < nt * r; e += kMmThreads)  // h = f (A x + b_A)
      h[e] = fmaf(mm_warp_total(part, e, r, 0.0f), fb[2 * e], fb[2 * e + 1]);
    __syncthreads();
    for (int g = 0; g < dims.groups; ++g)  // dh = UsT dy, group by group
      mm_tile_dots(u + g * dims.Dg, D, gs + g * dims.Dg, D, dims.Dg, rg, nt, part, g * rg, r);
    __syncthreads();
    for (int e = threadIdx.x; e < nt * r; e += kMmThreads)  // dh = f dh
      dh[e] = mm_warp_total(part, e, r, 0.0f) * fb[2 * e];
    __syncthreads();
    for (int k = threadIdx.x; k < r; k += kMmThreads) {
      float total = 0.0f;
      for (int t = 0; t < nt; ++t) total += dh[t * r + k];
      mm_accumulate(dA_s + r * D + k, total, first);
    }
    for (int64_t d = threadIdx.x; d < D; d += kMmThreads) {
      const int hg = static_cast<int>(d / dims.Dg) * rg;
      // dx = dy + A^T dh, with A's column d loaded kMmChunk rows at a time for all the tile's tokens
      // (held in registers: v has a fixed size), not once per token; S += dy.
      float v[kMmTileTokens], s = 0.0f;
#pragma unroll
      for (int t = 0; t < kMmTileTokens; ++t) {
        v[t] = t < nt ? load_token(gs + t * D + d) : 0.0f;
        s += v[t];   // adding zeros past nt leaves the sum as it was
      }
      mm_accumulate(S_s + d, s, first);
      for (int k0 = 0; k0 < r; k0 += kMmChunk) {
        float a[kMmChunk];
#pragma unroll
        for (int j = 0; j < kMmChunk; ++j) a[j] = k0 + j < r ? __ldg(A + (k0 + j) * D + d) : 0.0f;
#pragma unroll
        for (int t = 0; t < kMmTileTokens; ++t)
#pragma unroll
          for (int j = 0; j < kMmChunk; ++j)
            if (t < nt && k0 + j < r) v[t] = fmaf(a[j], dh[t * r + k0 + j], v[t]);
      }
#pragma unroll
      for (int t = 0; t < kMmTileTokens; ++t)
        if (t < nt) store(dxs + t * D + d, v[t]);
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

// The backward's per-entry (factor, bias) pairs for h [B,T,r]: fb[2e] = f_e, fb[2e+1] = f_e b_A[k],
// with f_e = kept ? 1 / (1 - p) : 0 under dropout (the forward's Philox bits) and 1 without (then
// fmaf(h, 1, b_A) is exactly h + b_A). Grid-stride. A pass of its own because Philox inside the
// backward kernel made nvcc spill registers there; the pairs are 8r bytes per token, next to the
// token's 2 * D elements of x and dy.
static __global__ void __launch_bounds__(kMmThreads)
    mm_factor_bias_kernel(DropoutKeys drop, const float* __restrict__ bA, float* __restrict__ fb, int64_t n, int r) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float scale = static_cast<float>(drop.scale);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const float f = !drop.active ? 1.0f : (dropout_keep(drop, static_cast<uint64_t>(e)) ? scale : 0.0f);
    fb[2 * e] = f;
    fb[2 * e + 1] = f * bA[e % r];
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
