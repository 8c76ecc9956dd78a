// fused_adamw_kernels.cuh: the CUDA kernel of minilvlm::fused_adamw_ and its launcher.
// No ATen here: the same code is compiled by nvcc (csrc/cuda/fused_adamw.cu) and by g++
// against the SIMT emulator (csrc/emu/fused_adamw_emu.cpp), so the code under test ships.
//
// Layout: blockIdx.y picks a segment (a run with its own lr, weight decay and step), and a
// grid-stride loop over blockIdx.x covers it. When every buffer is 16-byte aligned, the body
// moves 4 elements per thread with one vector load per buffer; the unaligned head and the
// tail of each segment take the scalar path.
#pragma once

#include "common/adamw_math.h"
#include "common/launch.h"

namespace minilvlm {
namespace cuda {

constexpr int kAdamwThreads = 256;
constexpr int kAdamwMaxSegments = 32;  // per launch; a 1 KiB kernel argument

struct AdamwSegmentTable {
  AdamwSegment seg[kAdamwMaxSegments];
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ void from_float(float* p, float x) { *p = x; }
__device__ __forceinline__ void from_float(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void from_float(__half* p, float x) { *p = __float2half_rn(x); }

// Four consecutive params: float4 for fp32, 8 bytes for bf16/fp16.
template <typename PT>
struct alignas(4 * sizeof(PT)) Pack4 {
  PT v[4];
};

template <typename PT, bool kMaster>
__device__ __forceinline__ void adamw_element(PT* param, const PT* grad, float* exp_avg, float* exp_avg_sq,
                                              float* master, int64_t i, const AdamwSegment& s,
                                              const AdamwConstants& c, float scale) {
  float w = kMaster ? master[i] : to_float(param[i]);
  adamw_update(w, to_float(grad[i]) * scale, exp_avg[i], exp_avg_sq[i], s, c);
  if (kMaster) master[i] = w;
  from_float(param + i, w);
}

template <typename PT, bool kMaster, bool kVector>
__global__ void __launch_bounds__(kAdamwThreads)
    fused_adamw_kernel(PT* __restrict__ param, const PT* __restrict__ grad, float* __restrict__ exp_avg,
                       float* __restrict__ exp_avg_sq, float* __restrict__ master,
                       const __grid_constant__ AdamwSegmentTable table, AdamwConstants c,
                       const float* __restrict__ grad_scale) {
  // __grid_constant__: index the table in parameter space instead of copying it to the stack.
  const AdamwSegment& s = table.seg[blockIdx.y];
  const float scale = grad_scale ? *grad_scale : 1.0f;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;

  int64_t body_begin = s.begin, body_end = s.begin;
  if (kVector) {
    body_begin = (s.begin + 3) / 4 * 4;
    if (body_begin > s.end) body_begin = s.end;
    body_end = body_begin + (s.end - body_begin) / 4 * 4;
    for (int64_t j = body_begin / 4 + tid; j < body_end / 4; j += stride) {
      const Pack4<PT> p = reinterpret_cast<const Pack4<PT>*>(param)[j];
      const Pack4<PT> g = reinterpret_cast<const Pack4<PT>*>(grad)[j];
      float4 m = reinterpret_cast<const float4*>(exp_avg)[j];
      float4 v = reinterpret_cast<const float4*>(exp_avg_sq)[j];
      float4 w = kMaster ? reinterpret_cast<const float4*>(master)[j]
                         : make_float4(to_float(p.v[0]), to_float(p.v[1]), to_float(p.v[2]), to_float(p.v[3]));
      adamw_update(w.x, to_float(g.v[0]) * scale, m.x, v.x, s, c);
      adamw_update(w.y, to_float(g.v[1]) * scale, m.y, v.y, s, c);
      adamw_update(w.z, to_float(g.v[2]) * scale, m.z, v.z, s, c);
      adamw_update(w.w, to_float(g.v[3]) * scale, m.w, v.w, s, c);
      Pack4<PT> out;
      from_float(&out.v[0], w.x);
      from_float(&out.v[1], w.y);
      from_float(&out.v[2], w.z);
      from_float(&out.v[3], w.w);
      reinterpret_cast<float4*>(exp_avg)[j] = m;
      reinterpret_cast<float4*>(exp_avg_sq)[j] = v;
      if (kMaster) reinterpret_cast<float4*>(master)[j] = w;
      reinterpret_cast<Pack4<PT>*>(param)[j] = out;
    }
  }
  // Scalar head [s.begin, body_begin) and tail [body_end, s.end); without kVector the tail is all.
  for (int64_t i = s.begin + tid; i < body_begin; i += stride)
    adamw_element<PT, kMaster>(param, grad, exp_avg, exp_avg_sq, master, i, s, c, scale);
  for (int64_t i = body_end + tid; i < s.end; i += stride)
    adamw_element<PT, kMaster>(param, grad, exp_avg, exp_avg_sq, master, i, s, c, scale);
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Launches one kernel per kAdamwMaxSegments segments (one launch for any usual optimizer).
// grad_scale is a device pointer to one float, or null. max_blocks bounds gridDim.x
// (a few waves of the device's SMs).
template <typename PT>
void launch_fused_adamw(PT* param, const PT* grad, float* exp_avg, float* exp_avg_sq, float* master,
                        const AdamwSegment* segments, int64_t num_segments, const AdamwConstants& c,
                        const float* grad_scale, int max_blocks, cudaStream_t stream) {
  const bool vector = aligned_to(param, 4 * sizeof(PT)) && aligned_to(grad, 4 * sizeof(PT)) &&
                      aligned_to(exp_avg, 16) && aligned_to(exp_avg_sq, 16) && (!master || aligned_to(master, 16));
  // Master weights exist only beside bf16/fp16 params (plan_fused_adamw rejects them for fp32).
  constexpr bool kCanHaveMaster = sizeof(PT) == 2;
  auto* kernel = vector ? &fused_adamw_kernel<PT, false, true> : &fused_adamw_kernel<PT, false, false>;
  if (kCanHaveMaster && master)
    kernel = vector ? &fused_adamw_kernel<PT, kCanHaveMaster, true> : &fused_adamw_kernel<PT, kCanHaveMaster, false>;
  for (int64_t first = 0; first < num_segments; first += kAdamwMaxSegments) {
    const int count = static_cast<int>(num_segments - first < kAdamwMaxSegments ? num_segments - first
                                                                                : kAdamwMaxSegments);
    AdamwSegmentTable table;
    int64_t longest = 0;
    for (int i = 0; i < count; ++i) {
      table.seg[i] = segments[first + i];
      const int64_t len = table.seg[i].end - table.seg[i].begin;
      longest = len > longest ? len : longest;
    }
    for (int i = count; i < kAdamwMaxSegments; ++i) table.seg[i] = AdamwSegment{0, 0, 1.0f, 0.0f, 1.0f, 0.0f};
    const int64_t per_block = static_cast<int64_t>(kAdamwThreads) * 4;
    int64_t blocks = (longest + per_block - 1) / per_block;
    blocks = blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks);
    MINILVLM_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(count)), dim3(kAdamwThreads),
                    0, stream)(param, grad, exp_avg, exp_avg_sq, master, table, c, grad_scale);
  }
}

}  // namespace cuda
}  // namespace minilvlm
