// launch.h: the one header every CUDA kernel header (csrc/cuda/<op>_kernels.cuh) includes, plus the
// launch configuration that the host side (csrc/cuda/<op>_launch.h) receives from its backend.
//
// Under nvcc it pulls in the CUDA runtime and the fp16/bf16 headers and maps the launch and
// dynamic-shared-memory macros onto real CUDA. Under a host compiler with -DMINILVLM_EMU it
// includes the SIMT emulator instead (csrc/emu/simt.h), so the same kernel source runs on the CPU
// in tests; that is why this header lives in cuda/ and not in common/, which never includes emu/.
// No ATen/torch header may be included from here.
//
//   MINILVLM_LAUNCH(kernel, grid, block, smem_bytes, stream)(args...);
//   MINILVLM_DYNAMIC_SMEM(T, name);   // T* name -> the launch's dynamic shared memory
//   MINILVLM_HD                       // host+device inline math helpers (common/hd.h)
#pragma once

#include <cstdint>

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
#error "cuda/launch.h: compile kernel headers with nvcc, or with -DMINILVLM_EMU for the CPU emulator"
#endif

namespace minilvlm {
namespace cuda {

// What a backend hands to an op's launch code (cuda/cuda_target.h for CUDA, emu/emu_target.h for
// the emulator): the stream, ignored by the emulator, and a bound on gridDim.x for grid-stride
// kernels: a few waves of the device's SMs on a GPU, a small number under the emulator so that test
// shapes still spread over several blocks and loop within each. Kernels whose grid follows the
// shape ignore max_blocks.
struct LaunchConfig {
  int max_blocks;
  cudaStream_t stream;
  int sm_count = 0;  // the device's SMs when the backend queried them (CUDA), else 0
};

// The grid bound of a grid-stride kernel that should run as exactly one full wave: on a GPU, the
// device's SMs times the blocks of `kernel` that fit on one SM at once (the occupancy API, so the
// registers ptxas actually gave this build decide, not a guess that leaves a ragged second wave);
// under the emulator, or when the backend did not query the SMs, config.max_blocks.
template <typename Kernel>
int64_t one_wave_blocks(Kernel kernel, int threads, const LaunchConfig& config) {
#if defined(__CUDACC__)
  if (config.sm_count > 0) {
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0) == cudaSuccess && per_sm > 0)
      return static_cast<int64_t>(config.sm_count) * per_sm;
  }
#else
  (void)kernel;
  (void)threads;
#endif
  return config.max_blocks;
}

}  // namespace cuda
}  // namespace minilvlm
