// launch.h: the one header every CUDA kernel header (csrc/cuda/*_kernels.cuh) includes.
//
// Under nvcc it pulls in the CUDA runtime and fp16/bf16 headers and maps the launch and
// dynamic-shared-memory macros onto real CUDA. Under a host compiler with -DMINILVLM_EMU it
// includes the SIMT emulator instead, so the same kernel source runs on the CPU in tests.
// No ATen/torch header may be included from here.
//
//   MINILVLM_LAUNCH(kernel, grid, block, smem_bytes, stream)(args...);
//   MINILVLM_DYNAMIC_SMEM(T, name);   // T* name -> the launch's dynamic shared memory
//   MINILVLM_HD                       // host+device inline math helpers
#pragma once

#include "common/hd.h"

#if defined(__CUDACC__)

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cassert>

#define MINILVLM_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#define MINILVLM_DYNAMIC_SMEM(T, name)                   \
  extern __shared__ __align__(16) unsigned char name##_raw_[]; \
  T* name = reinterpret_cast<T*>(name##_raw_)

#elif defined(MINILVLM_EMU)

#include "emu/simt.h"

#else
#error "common/launch.h: compile kernel headers with nvcc, or with -DMINILVLM_EMU for the CPU emulator"
#endif

#ifndef MINILVLM_HD
#if defined(__CUDACC__)
#define MINILVLM_HD __host__ __device__ __forceinline__
#else
#define MINILVLM_HD inline
#endif
#endif
