// fused_adamw_kernels.cuh: the CUDA kernels of minilvlm::fused_adamw_ and fused_adamw_multi_
// (the latter at the end of the file). Device code only, no ATen:
// nvcc compiles it into csrc/cuda/fused_adamw.cu and g++ into the emulator build
// (csrc/emu/fused_adamw_emu.cpp), both through cuda/fused_adamw_launch.h, so the code under test
// is the code that ships.
//
// Layout: blockIdx.y picks a segment (a run with its own lr, weight decay and step), and a
// grid-stride loop over blockIdx.x covers it. When every buffer is 16-byte aligned, the body
// moves 4 elements per thread with one vector load per buffer; the unaligned head and the
// tail of each segment take the scalar path.
//
// found_inf (a device pointer, or null) skips the whole step when it holds a non-zero value:
// every thread reads it first and returns, so an overflowed fp16 step costs one load per thread
// and the host never has to look at the flag before launching.
#pragma once

#include <cstdint>

#include "common/fused_adamw_math.h"
#include "cuda/convert.cuh"
#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

constexpr int kAdamwThreads = 256;
constexpr int kAdamwMaxSegments = 32;  // per launch; a 1 KiB kernel argument

struct AdamwSegmentTable {
  AdamwSegment seg[kAdamwMaxSegments];
};

// Four consecutive params: float4 for fp32, 8 bytes for bf16/fp16.
template <typename PT>
struct alignas(4 * sizeof(PT)) Pack4 {
  PT v[4];
};

template <typename PT, bool kMaster>
__device__ __forceinline__ void adamw_element(PT* param, const PT* grad, float* exp_avg, float* exp_avg_sq,
                                              float* master, int64_t i, const AdamwSegment& s,
                                              const AdamwConstants& c, float scale) {
  float w = kMaster ? master[i] : widen<float>(param[i]);
  adamw_update(w, widen<float>(grad[i]) * scale, exp_avg[i], exp_avg_sq[i], s, c);
  if (kMaster) master[i] = w;
  store(param + i, w);
}

// At least kAdamwMinBlocks blocks per SM (64 registers a thread): with the found_inf exit, ptxas's own
// budget under a bare __launch_bounds__ (40 registers) spills the bf16/fp16 master kernels on sm_90,
// which need up to 58. Four blocks of 256 threads (32 warps an SM) keep a streaming kernel's loads in
// flight: each thread has four 16-byte loads outstanding per iteration.
constexpr int kAdamwMinBlocks = 4;

// The update of [begin, end) by threads tid, tid + stride, ...: with kVector (every buffer 16-byte
// aligned, 8-byte for bf16/fp16 params) the body moves 4 elements per thread with one vector load
// per buffer, and the unaligned head and the tail take the scalar path; without it all is scalar.
// Both kernels below run it: over a segment with a grid stride, or over one chunk with a block stride.
template <typename PT, bool kMaster, bool kVector>
__device__ __forceinline__ void adamw_span(PT* __restrict__ param, const PT* __restrict__ grad,
                                           float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                           float* __restrict__ master, int64_t begin, int64_t end, int64_t tid,
                                           int64_t stride, const AdamwSegment& s, const AdamwConstants& c,
                                           float scale) {
  int64_t body_begin = begin, body_end = begin;
  if (kVector) {
    body_begin = (begin + 3) / 4 * 4;
    if (body_begin > end) body_begin = end;
    body_end = body_begin + (end - body_begin) / 4 * 4;
    for (int64_t j = body_begin / 4 + tid; j < body_end / 4; j += stride) {
      const Pack4<PT> p = reinterpret_cast<const Pack4<PT>*>(param)[j];
      const Pack4<PT> g = reinterpret_cast<const Pack4<PT>*>(grad)[j];
      float4 m = reinterpret_cast<const float4*>(exp_avg)[j];
      float4 v = reinterpret_cast<const float4*>(exp_avg_sq)[j];
      float4 w = kMaster ? reinterpret_cast<const float4*>(master)[j]
                         : make_float4(widen<float>(p.v[0]), widen<float>(p.v[1]), widen<float>(p.v[2]),
                                       widen<float>(p.v[3]));
      adamw_update(w.x, widen<float>(g.v[0]) * scale, m.x, v.x, s, c);
      adamw_update(w.y, widen<float>(g.v[1]) * scale, m.y, v.y, s, c);
      adamw_update(w.z, widen<float>(g.v[2]) * scale, m.z, v.z, s, c);
      adamw_update(w.w, widen<float>(g.v[3]) * scale, m.w, v.w, s, c);
      Pack4<PT> out;
      store(&out.v[0], w.x);
      store(&out.v[1], w.y);
      store(&out.v[2], w.z);
      store(&out.v[3], w.w);
      reinterpret_cast<float4*>(exp_avg)[j] = m;
      reinterpret_cast<float4*>(exp_avg_sq)[j] = v;
      if (kMaster) reinterpret_cast<float4*>(master)[j] = w;
      reinterpret_cast<Pack4<PT>*>(param)[j] = out;
    }
  }
  // Scalar head [begin, body_begin) and tail [body_end, end); without kVector the tail is all.
  for (int64_t i = begin + tid; i < body_begin; i += stride)
    adamw_element<PT, kMaster>(param, grad, exp_avg, exp_avg_sq, master, i, s, c, scale);
  for (int64_t i = body_end + tid; i < end; i += stride)
    adamw_element<PT, kMaster>(param, grad, exp_avg, exp_avg_sq, master, i, s, c, scale);
}

template <typename PT, bool kMaster, bool kVector>
__global__ void __launch_bounds__(kAdamwThreads, kAdamwMinBlocks)
    fused_adamw_kernel(PT* __restrict__ param, const PT* __restrict__ grad, float* __restrict__ exp_avg,
                       float* __restrict__ exp_avg_sq, float* __restrict__ master,
                       const __grid_constant__ AdamwSegmentTable table, AdamwConstants c,
                       const float* __restrict__ grad_scale, const float* __restrict__ found_inf) {
  if (found_inf && *found_inf != 0.0f) return;  // inf/NaN grads: leave every buffer as it is
  // __grid_constant__: index the table in parameter space instead of copying it to the stack.
  const AdamwSegment& s = table.seg[blockIdx.y];
  const float scale = grad_scale ? *grad_scale : 1.0f;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  adamw_span<PT, kMaster, kVector>(param, grad, exp_avg, exp_avg_sq, master, s.begin, s.end, tid, stride, s, c,
                                   scale);
}

// ---------------------------------------------------------------------------------------
// fused_adamw_multi_: lists of tensors, apex-style. Each launch carries, by value, the pointers
// and constants of up to kAdamwListTensors tensors and, for each of its up to kAdamwListBlocks
// blocks, which tensor and which kAdamwChunk-element chunk of it the block updates. The host
// (cuda/fused_adamw_launch.h) fills the table and launches once per full table.
constexpr int kAdamwListTensors = 32;
constexpr int kAdamwListBlocks = 256;
constexpr int64_t kAdamwChunk = 1 << 16;

template <typename PT>
struct AdamwTensorTable {
  PT* param[kAdamwListTensors];
  const PT* grad[kAdamwListTensors];
  float* exp_avg[kAdamwListTensors];
  float* exp_avg_sq[kAdamwListTensors];
  float* master[kAdamwListTensors];
  AdamwSegment seg[kAdamwListTensors];  // [0, numel) and the tensor's lr, weight decay and step
  int32_t block_chunk[kAdamwListBlocks];
  uint8_t block_tensor[kAdamwListBlocks];
};
// Kernel parameters are limited to 4 KiB (32 KiB only from CUDA 12.1 on, on Volta and later): the table
// stays under 4 KiB with room for the other arguments, so the kernel launches under any toolkit.
static_assert(sizeof(AdamwTensorTable<float>) + 64 <= 4096, "the tensor table must fit the kernel-argument limit");
static_assert(kAdamwListTensors <= 256, "block_tensor is one byte");

template <typename PT, bool kMaster>
__global__ void __launch_bounds__(kAdamwThreads, kAdamwMinBlocks)
    fused_adamw_multi_kernel(const __grid_constant__ AdamwTensorTable<PT> table, AdamwConstants c,
                             const float* __restrict__ grad_scale, const float* __restrict__ found_inf) {
  if (found_inf && *found_inf != 0.0f) return;  // as in fused_adamw_kernel
  const int t = table.block_tensor[blockIdx.x];
  const AdamwSegment& s = table.seg[t];
  const float scale = grad_scale ? *grad_scale : 1.0f;
  const int64_t begin = static_cast<int64_t>(table.block_chunk[blockIdx.x]) * kAdamwChunk;
  const int64_t end = begin + kAdamwChunk < s.end ? begin + kAdamwChunk : s.end;
  PT* param = table.param[t];
  const PT* grad = table.grad[t];
  float *exp_avg = table.exp_avg[t], *exp_avg_sq = table.exp_avg_sq[t], *master = table.master[t];
  // Tensors (FSDP2 shards, views) may start anywhere: the vector path is chosen per tensor.
  const uintptr_t wide = reinterpret_cast<uintptr_t>(exp_avg) | reinterpret_cast<uintptr_t>(exp_avg_sq) |
                         (kMaster ? reinterpret_cast<uintptr_t>(master) : 0);
  const uintptr_t narrow = reinterpret_cast<uintptr_t>(param) | reinterpret_cast<uintptr_t>(grad);
  if (wide % 16 == 0 && narrow % (4 * sizeof(PT)) == 0)
    adamw_span<PT, kMaster, true>(param, grad, exp_avg, exp_avg_sq, master, begin, end, threadIdx.x, blockDim.x, s,
                                  c, scale);
  else
    adamw_span<PT, kMaster, false>(param, grad, exp_avg, exp_avg_sq, master, begin, end, threadIdx.x, blockDim.x, s,
                                   c, scale);
}

}  // namespace cuda
}  // namespace minilvlm
