// selftest_kernels.cuh: the SIMT emulator's own test kernels. Valid CUDA (nvcc compiles this
// header through csrc/emu/selftest_check.cu) and, with -DMINILVLM_EMU, host C++ run by the
// emulator (csrc/emu/selftest.cpp wraps each kernel in a minilvlm_emu::selftest_* op).
#pragma once

#include "cuda/launch.h"

namespace minilvlm {
namespace emu_selftest {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum_down(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFullMask, v, off);
  return v;
}

__device__ __forceinline__ float warp_sum_xor(float v, int width) {
  for (int off = width / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off, width);
  return v;
}

// (1) Per-block sums: grid-stride accumulation, a shared-memory tree down to one warp, then a
// warp-shuffle reduction. blockDim.x must be a power of two in [32, 1024].
__global__ void block_sum_kernel(const float* __restrict__ x, float* __restrict__ partial, int n) {
  __shared__ float buf[1024];
  const int tid = threadIdx.x;
  float acc = 0.0f;
  for (int i = blockIdx.x * blockDim.x + tid; i < n; i += blockDim.x * gridDim.x) acc += __ldg(x + i);
  buf[tid] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s >= 32; s >>= 1) {
    if (tid < s) buf[tid] += buf[tid + s];
    __syncthreads();
  }
  if (tid < 32) {
    float v = warp_sum_down(buf[tid]);
    if (tid == 0) partial[blockIdx.x] = v;
  }
}

// (2) Warp primitives. Every lane of every warp takes part (lanes past n contribute 0).
// fout[i*7 + k]: k=0 xor-butterfly warp sum, 1 shfl_down sum broadcast from lane 0 by
// __shfl_sync, 2 inclusive prefix sum by __shfl_up_sync, 3 sum over the 8-lane section
// (width 8), 4 value of lane (lane+5)%32, 5 raw __shfl_down_sync by 3 (the last 3 lanes keep
// their own value), 6 raw __shfl_up_sync by 2 within 16-lane sections.
// iout[i*3 + k]: k=0 ballot(x>0), 1 any(x>2), 2 all(x>-3).
__global__ void warp_ops_kernel(const float* __restrict__ x, float* __restrict__ fout, long long* __restrict__ iout,
                                int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & 31;
  const float v = i < n ? x[i] : 0.0f;
  const float total = warp_sum_xor(v, 32);
  const float down = warp_sum_down(v);
  const float bcast = __shfl_sync(kFullMask, down, 0);
  float scan = v;
  for (int off = 1; off < 32; off <<= 1) {
    const float other = __shfl_up_sync(kFullMask, scan, off);
    if (lane >= off) scan += other;
  }
  const float sec8 = warp_sum_xor(v, 8);
  const float rot = __shfl_sync(kFullMask, v, lane + 5);  // srcLane wraps modulo the width
  const float down3 = __shfl_down_sync(kFullMask, v, 3);
  const float up2 = __shfl_up_sync(kFullMask, v, 2, 16);
  const unsigned ballot = __ballot_sync(kFullMask, v > 0.0f);
  const int any = __any_sync(kFullMask, v > 2.0f);
  const int all = __all_sync(kFullMask, v > -3.0f);
  __syncwarp();
  const unsigned active = __activemask();  // all lanes are still running here
  __syncwarp();
  float* f = fout + i * 7;
  f[0] = total;
  f[1] = bcast;
  f[2] = scan;
  f[3] = sec8;
  f[4] = rot;
  f[5] = down3;
  f[6] = up2;
  iout[i * 3 + 0] = static_cast<long long>(ballot);
  iout[i * 3 + 1] = any;
  iout[i * 3 + 2] = active == kFullMask ? all : -1;
}

// (3) Tiled transpose of a rows x cols matrix through a padded 32x33 shared tile;
// blocks of (32, 8) threads, grid (ceil(cols/32), ceil(rows/32)).
constexpr int kTile = 32;
constexpr int kTileRows = 8;
__global__ void transpose_kernel(const float* __restrict__ in, float* __restrict__ out, int rows, int cols) {
  __shared__ float tile[kTile][kTile + 1];
  int c = blockIdx.x * kTile + threadIdx.x;
  int r = blockIdx.y * kTile + threadIdx.y;
  for (int k = 0; k < kTile; k += kTileRows) {
    if (c < cols && r + k < rows) tile[threadIdx.y + k][threadIdx.x] = in[(r + k) * cols + c];
  }
  __syncthreads();
  c = blockIdx.y * kTile + threadIdx.x;  // column of out = row of in
  r = blockIdx.x * kTile + threadIdx.y;
  for (int k = 0; k < kTile; k += kTileRows) {
    if (c < rows && r + k < cols) out[(r + k) * rows + c] = tile[threadIdx.x][threadIdx.y + k];
  }
}

// (4) out = a*x + y with a grid-stride loop over n (tail included). Each block stages its chunk
// of x in dynamic shared memory (blockDim.x floats) and every thread reads the value another
// thread staged (mirrored index). A template, so it is launched through a function pointer.
template <typename T>
__global__ void saxpy_kernel(T a, const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out, int n) {
  MINILVLM_DYNAMIC_SMEM(T, stage);
  const int t = threadIdx.x;
  const int mirror = blockDim.x - 1 - t;
  for (int base = blockIdx.x * blockDim.x; base < n; base += blockDim.x * gridDim.x) {
    if (base + t < n) stage[t] = x[base + t];
    __syncthreads();
    const int j = base + mirror;
    if (j < n) out[j] = a * stage[mirror] + y[j];
    __syncthreads();
  }
}

// (5) Deliberately broken synchronisation; the emulator must report it.
// mode 0: threads >= 16 return before a __syncthreads the others wait at.
// mode 1: even and odd threads wait at two different __syncthreads calls.
// mode 2: lanes 16-31 return while lanes 0-15 shuffle with the full mask.
__global__ void divergent_sync_kernel(int* out, int mode) {
  const int t = threadIdx.x;
  __shared__ int s[256];
  s[t] = t;
  if (mode == 0) {
    if (t >= 16) return;
    __syncthreads();
  } else if (mode == 1) {
    if (t & 1) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else {
    if (t % 32 >= 16) return;
    s[t] = __shfl_xor_sync(kFullMask, s[t], 1);
  }
  out[blockIdx.x * blockDim.x + t] = s[(t + 1) % blockDim.x];
}

// (6) A shared-memory race: every thread writes its id to one slot with no ordering; after
// the barrier all read it back. The winner depends on the scheduling order.
__global__ void smem_race_kernel(int* out) {
  __shared__ int slot;
  slot = threadIdx.x;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slot;
}

// (7) Atomics: a shared-memory histogram merged into global memory, per-bin float sums,
// a global float max (CAS loop), an integer max and a 64-bit element count.
__device__ __forceinline__ float atomic_max_float(float* addr, float v) {
  int* p = reinterpret_cast<int*>(addr);
  int old = *p;
  while (__int_as_float(old) < v) {
    const int assumed = old;
    old = atomicCAS(p, assumed, __float_as_int(v));
    if (old == assumed) break;
  }
  return __int_as_float(old);
}

__global__ void histogram_kernel(const float* __restrict__ x, int n, int bins, int* __restrict__ counts,
                                 float* __restrict__ sums, float* __restrict__ vmax, int* __restrict__ imax,
                                 unsigned long long* __restrict__ total) {
  MINILVLM_DYNAMIC_SMEM(int, local);  // bins ints
  for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  float m = -INFINITY;
  int im = -1;
  unsigned long long seen = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float v = x[i];
    const int b = min(static_cast<int>(v * bins), bins - 1);
    atomicAdd(&local[b], 1);
    atomicAdd(&sums[b], v);
    m = fmaxf(m, v);
    im = max(im, b);
    ++seen;
  }
  atomic_max_float(vmax, m);
  atomicMax(imax, im);
  atomicAdd(total, seen);
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    if (local[b]) atomicAdd(&counts[b], local[b]);
  }
}

// bf16 / half conversions and a bf16 shuffle. out rows: bf16(x), half(x), bf16 value of the
// neighbouring lane (xor 1), bf16(x)+bf16(x) in bf16 arithmetic; all converted back to float.
__global__ void half_roundtrip_kernel(const float* __restrict__ x, float* __restrict__ out, int n) {
  for (int base = blockIdx.x * blockDim.x; base < n; base += blockDim.x * gridDim.x) {
    const int i = base + threadIdx.x;
    const float v = i < n ? x[i] : 0.0f;
    const __nv_bfloat16 b = __float2bfloat16(v);
    const __half h = __float2half(v);
    const __nv_bfloat16 nb = __shfl_xor_sync(kFullMask, b, 1);
    const __nv_bfloat16 twice = __hadd(b, b);
    if (i < n) {
      out[i] = __bfloat162float(b);
      out[n + i] = __half2float(h);
      out[2 * n + i] = __bfloat162float(nb);
      out[3 * n + i] = __bfloat162float(twice);
    }
  }
}

// out[i] = i over the whole grid: a kernel with no bug, for the launch-validation tests.
__global__ void iota_kernel(int* out) {
  const int i = (blockIdx.x * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  out[i] = i;
}

// A device-side assert that fails for one thread of block 1.
__global__ void assert_kernel(int* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  assert(!(blockIdx.x == 1 && threadIdx.x == 7));
  out[i] = i;
}

}  // namespace emu_selftest
}  // namespace minilvlm
