// hd.h: MINILVLM_HD, the one marker for the small functions that CPU kernels and CUDA kernels
// share (common/<op>_math.h): host+device and force-inlined under nvcc, plain `inline` for host
// compilers, the emulator build included. No ATen, no CUDA runtime.
#pragma once

#if defined(__CUDACC__)
#define MINILVLM_HD __host__ __device__ __forceinline__
#else
#define MINILVLM_HD inline
#endif
