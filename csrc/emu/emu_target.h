// emu_target.h: EmuTarget, the backend that csrc/emu/<op>_emu.cpp hands to the shared CUDA launch
// code (csrc/cuda/<op>_launch.h): the SIMT emulator runs the kernels on CPU tensors, synchronously
// and without streams. The real CUDA build has its own backend, csrc/cuda/cuda_target.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

class EmuTarget {
 public:
  // max_blocks: the grid bound of grid-stride kernels under the emulator's own grids; small, so
  // that test shapes still spread over several blocks and loop within each. blocks_per_sm: the
  // bound per SM that the op's CudaTarget gets (the same constant, from <op>_launch.h); with a GPU
  // profile set (minilvlm_emu::set_gpu, "A100"/"H100") the bound is that GPU's SM count times it,
  // the grid the real GPU would run. 0 and 0 for ops whose grids follow the shape.
  EmuTarget(int max_blocks, int blocks_per_sm) : max_blocks_(max_blocks), blocks_per_sm_(blocks_per_sm) {}
  // Without blocks_per_sm a launch under a GPU profile is refused (it cannot know the GPU grid).
  explicit EmuTarget(int max_blocks) : max_blocks_(max_blocks), blocks_per_sm_(-1) {}

  LaunchConfig operator()(const at::Tensor& x, const char* op) const {
    TORCH_CHECK(x.device().is_cpu(), "minilvlm_emu::", op, " emulates the CUDA kernels on CPU tensors, got ",
                x.device());
    const minilvlm_emu::GpuProfile* gpu = minilvlm_emu::current_gpu();
    if (!gpu || max_blocks_ == 0) return LaunchConfig{max_blocks_, nullptr};
    TORCH_CHECK(blocks_per_sm_ > 0, "minilvlm_emu::", op, ": its EmuTarget has no blocks per SM, so it cannot run the ",
                gpu->name, " grid; construct it as EmuTarget(kEmuMaxBlocks, <the op's blocks per SM>)");
    return LaunchConfig{gpu->sm_count * blocks_per_sm_, nullptr};
  }

 private:
  int max_blocks_;
  int blocks_per_sm_;
};

}  // namespace cuda
}  // namespace minilvlm
