// hd.h: MINILVLM_HD marks small math functions shared by CPU kernels, CUDA kernels and
// the emulator build. No ATen, no CUDA runtime: host compilers see plain `inline`.
#pragma once

#ifndef MINILVLM_HD
#if defined(__CUDACC__)
#define MINILVLM_HD __host__ __device__ __forceinline__
#else
#define MINILVLM_HD inline
#endif
#endif
