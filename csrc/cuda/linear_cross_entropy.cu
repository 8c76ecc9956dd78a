// linear_cross_entropy.cu: CUDA registration of minilvlm::linear_cross_entropy. The kernels are in
// linear_cross_entropy_kernels.cuh and their host side in linear_cross_entropy_launch.h (both
// shared with the emulator build); this file runs them on the tensors' CUDA device and stream and
// reports launch errors. The GEMMs are ATen's (cuBLAS).
// Light headers only (ATen/c10), never torch/extension.h: see docs/design.md, "Native build".
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "cuda/cuda_target.h"
#include "cuda/linear_cross_entropy_launch.h"

namespace minilvlm {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_cuda(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, at::ScalarType compute_dtype, int64_t chunk_rows, std::array<bool, 3> output_mask) {
  cuda::CudaTarget target(cuda::kLinearCeBlocksPerSm);
  auto out = cuda::linear_cross_entropy(hidden, weight, bias, targets, compute_dtype, chunk_rows, output_mask, target);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CUDA, m) { m.impl("linear_cross_entropy", &linear_cross_entropy_cuda); }

}  // namespace minilvlm
