// gelu_kernels.cuh: the CUDA kernels of minilvlm::gelu and gelu_backward in the three forms of
// common/activation_math.h (erf, tanh, quick). Device code only, no ATen: nvcc compiles it into
// csrc/cuda/gelu.cu and g++ into the emulator build (csrc/emu/gelu_emu.cpp), both through
// cuda/gelu_launch.h.
//
// Grid-stride over N-element packs (16-byte accesses where the launch code found every tensor
// aligned, cuda/row_kernels.cuh), then the last n % N elements one by one. Only x is saved.
//   forward   reads x, writes y                   bf16: 4 B/element, fp32: 8
//   backward  reads grad, x, writes grad_x        bf16: 6 B/element, fp32: 12
#pragma once

#include <cstdint>

#include "common/activation_math.h"
#include "cuda/convert.cuh"
#include "cuda/launch.h"
#include "cuda/row_kernels.cuh"

namespace minilvlm {
namespace cuda {

template <typename T, int N, GeluKind K>
__global__ void __launch_bounds__(kElementwiseThreads)
    gelu_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for_each_pack<N>(n, [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float v[W];
    load_pack<W>(x + i, v);
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] = gelu_value<K>(v[j]);
    store_pack<W>(y + i, v);
  });
}

template <typename T, int N, GeluKind K>
__global__ void __launch_bounds__(kElementwiseThreads)
    gelu_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x, T* __restrict__ grad_x, int64_t n) {
  for_each_pack<N>(n, [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float g[W], v[W];
    load_pack<W>(grad + i, g);
    load_pack<W>(x + i, v);
#pragma unroll
    for (int j = 0; j < W; ++j) g[j] *= gelu_slope<K>(v[j]);
    store_pack<W>(grad_x + i, g);
  });
}

}  // namespace cuda
}  // namespace minilvlm
