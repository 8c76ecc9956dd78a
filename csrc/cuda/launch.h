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
};

}  // namespace cuda
}  // namespace minilvlm
