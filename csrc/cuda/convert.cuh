// convert.cuh: the element conversions of the CUDA kernels, between the types tensors store
// (uint8, float, double, __half, __nv_bfloat16) and the type a kernel computes in (float, or double
// for float64 data). Device code for every csrc/cuda/<op>_kernels.cuh; no ATen.
#pragma once

#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

// widen<Acc>(x): x in the compute type Acc (exact for every pair the kernels use).
template <typename Acc>
__device__ __forceinline__ Acc widen(unsigned char x) { return static_cast<Acc>(x); }
template <typename Acc>
__device__ __forceinline__ Acc widen(float x) { return static_cast<Acc>(x); }
template <typename Acc>
__device__ __forceinline__ Acc widen(double x) { return static_cast<Acc>(x); }
template <typename Acc>
__device__ __forceinline__ Acc widen(__half x) { return static_cast<Acc>(__half2float(x)); }
template <typename Acc>
__device__ __forceinline__ Acc widen(__nv_bfloat16 x) { return static_cast<Acc>(__bfloat162float(x)); }

// store(p, v): v into *p, rounded to nearest even where *p is narrower (as ATen's casts round).
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

}  // namespace cuda
}  // namespace minilvlm
