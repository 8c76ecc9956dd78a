// selftest_check.cu: lets the cuda_check target compile the emulator self-test kernels with
// nvcc, so they stay valid CUDA. No op is registered from here.
#include "emu/selftest_kernels.cuh"

template __global__ void minilvlm::emu_selftest::saxpy_kernel<float>(float, const float*, const float*, float*, int);
