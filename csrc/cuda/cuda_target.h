// cuda_target.h: CudaTarget, the backend that csrc/cuda/<op>.cu hands to the shared launch code
// (csrc/cuda/<op>_launch.h): it checks that the op's tensors are on a CUDA device, makes that
// device current until the op returns, and launches on its current stream. The emulator build
// has its own backend, csrc/emu/emu_target.h. c10/cuda headers: for .cu files only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

class CudaTarget {
 public:
  // blocks_per_sm: how many blocks per SM grid-stride kernels get (a few waves, to hide memory
  // latency); 0 for ops whose grids follow the shape, which skips the device query.
  explicit CudaTarget(int blocks_per_sm) : blocks_per_sm_(blocks_per_sm) {}

  LaunchConfig operator()(const at::Tensor& x, const char* op) {
    TORCH_CHECK(x.is_cuda(), op, " (CUDA kernel): tensors must be on a CUDA device, got ", x.device());
    guard_.set_device(x.device());
    int sm_count = 0;
    if (blocks_per_sm_ > 0)
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, x.get_device()));
    return LaunchConfig{sm_count * blocks_per_sm_, c10::cuda::getCurrentCUDAStream().stream(), sm_count};
  }

 private:
  c10::cuda::OptionalCUDAGuard guard_;  // restores the caller's device when the op returns
  int blocks_per_sm_;
};

}  // namespace cuda
}  // namespace minilvlm
