// rope_kernels.cuh: the CUDA kernel of minilvlm::rope_ and rope_backward. Device code only, no
// ATen: nvcc compiles it into csrc/cuda/rope.cu and g++ into the emulator build
// (csrc/emu/rope_emu.cpp), both through cuda/rope_launch.h, so the code under test is the code that
// ships.
//
//   rope_kernel   one block per position (b, t), grid-stride over the B*T positions; its threads
//                 walk the (head, pair) items of q and then of k, so that a warp covers 32
//                 consecutive channels of one head row (coalesced) and the position's cos/sin row
//                 (read through the read-only cache) is shared by every head. Each pair is read,
//                 rotated in fp32 and written once; with copy_rest (the backward, out of place)
//                 the pass-through channels are copied after.
#pragma once

#include <cstdint>

#include "common/rope_math.h"
#include "cuda/convert.cuh"
#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

constexpr int kRopeThreads = 256;

template <typename T>
__device__ __forceinline__ void rope_rotate_side(const T* src, T* dst, const RopeSide& side,
                                                 int64_t b, int64_t t, const float* __restrict__ c,
                                                 const float* __restrict__ s, float sign, int half) {
  const int items = static_cast<int>(side.heads) * half;
  for (int j = threadIdx.x; j < items; j += blockDim.x) {
    const int h = j / half, i = j - h * half;
    const int64_t off = side.offset(b, h, t);
    float o1, o2;
    rope_rotate_pair(widen<float>(src[off + i]), widen<float>(src[off + half + i]), __ldg(c + i),
                     sign * __ldg(s + i), o1, o2);
    store(dst + off + i, o1);
    store(dst + off + half + i, o2);
  }
}

template <typename T>
__device__ __forceinline__ void rope_copy_rest(const T* src, T* dst, const RopeSide& side,
                                               int64_t b, int64_t t, int first, int rest) {
  const int items = static_cast<int>(side.heads) * rest;
  for (int j = threadIdx.x; j < items; j += blockDim.x) {
    const int h = j / rest, i = j - h * rest;
    const int64_t off = side.offset(b, h, t) + first + i;
    dst[off] = src[off];
  }
}

// In place (rope_) src == dst for each side, which is why they are not __restrict__; the backward
// passes k.heads == 0. sign is -1 for the rotation by -angle.
template <typename T>
__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(const T* q_src, T* q_dst, const T* k_src, T* k_dst, const float* __restrict__ cos,
                const float* __restrict__ sin, const RopeGeometry g, float sign, bool copy_rest) {
  const int half = static_cast<int>(g.half);
  const int64_t positions = g.batch * g.tokens;
  for (int64_t p = blockIdx.x; p < positions; p += gridDim.x) {
    const int64_t b = p / g.tokens, t = p - b * g.tokens;
    const float* c = cos + g.table_offset(b, t);
    const float* s = sin + g.table_offset(b, t);
    if (half > 0) {
      rope_rotate_side(q_src, q_dst, g.q, b, t, c, s, sign, half);
      if (g.k.heads > 0) rope_rotate_side(k_src, k_dst, g.k, b, t, c, s, sign, half);
    }
    if (copy_rest && g.rest() > 0) {
      rope_copy_rest(q_src, q_dst, g.q, b, t, 2 * half, static_cast<int>(g.rest()));
      if (g.k.heads > 0) rope_copy_rest(k_src, k_dst, g.k, b, t, 2 * half, static_cast<int>(g.rest()));
    }
  }
}

}  // namespace cuda
}  // namespace minilvlm
