// planted_bugs_check.cu: lets the cuda_check target compile the planted-bug kernels with nvcc (both
// the correct and the broken variant), so they stay valid CUDA. No op is registered from here.
#include "planted_bugs.cuh"

namespace minilvlm {
namespace planted {
template __global__ void missing_barrier_kernel<false>(const float*, const float*, float*, int, int, int);
template __global__ void missing_barrier_kernel<true>(const float*, const float*, float*, int, int, int);
template __global__ void masked_tail_kernel<false>(const float*, const float*, float*, int, int);
template __global__ void masked_tail_kernel<true>(const float*, const float*, float*, int, int);
template __global__ void wrong_stride_kernel<false>(float*, const float*, float, int64_t);
template __global__ void wrong_stride_kernel<true>(float*, const float*, float, int64_t);
template __global__ void wrong_shuffle_offset_kernel<false>(const float*, float*, int);
template __global__ void wrong_shuffle_offset_kernel<true>(const float*, float*, int);
template __global__ void divergent_barrier_kernel<false>(float, const float*, float*, int);
template __global__ void divergent_barrier_kernel<true>(float, const float*, float*, int);
template __global__ void inactive_lane_shuffle_kernel<false>(const float*, float*, int);
template __global__ void inactive_lane_shuffle_kernel<true>(const float*, float*, int);
template __global__ void missing_syncwarp_kernel<false>(const float*, float*, int);
template __global__ void missing_syncwarp_kernel<true>(const float*, float*, int);
}  // namespace planted
}  // namespace minilvlm
