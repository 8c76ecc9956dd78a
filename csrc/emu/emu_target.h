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
  // max_blocks: the grid bound of grid-stride kernels; small, so that test shapes still spread over
  // several blocks and loop within each. 0 for ops whose grids follow the shape.
  explicit EmuTarget(int max_blocks) : max_blocks_(max_blocks) {}

  LaunchConfig operator()(const at::Tensor& x, const char* op) const {
    TORCH_CHECK(x.device().is_cpu(), "minilvlm_emu::", op, " emulates the CUDA kernels on CPU tensors, got ",
                x.device());
    return LaunchConfig{max_blocks_, nullptr};
  }

 private:
  int max_blocks_;
};

}  // namespace cuda
}  // namespace minilvlm
