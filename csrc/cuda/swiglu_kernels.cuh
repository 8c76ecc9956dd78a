// swiglu_kernels.cuh: the CUDA kernels of minilvlm::swiglu and swiglu_backward, silu(gate) * up
// (common/activation_math.h). Device code only, no ATen: nvcc compiles it into csrc/cuda/swiglu.cu
// and g++ into the emulator build (csrc/emu/swiglu_emu.cpp), both through cuda/swiglu_launch.h.
//
// Grid-stride over N-element packs (16-byte accesses where the launch code found every tensor
// aligned, cuda/row_kernels.cuh), then the last n % N elements one by one. The backward recomputes
// sigmoid(gate) instead of reading a stored silu(gate).
//   forward   reads gate, up, writes y                          bf16: 6 B/element, fp32: 12
//   backward  reads grad, gate, up, writes grad_gate, grad_up   bf16: 10 B/element, fp32: 20
#pragma once

#include <cstdint>

#include "common/activation_math.h"
#include "cuda/convert.cuh"
#include "cuda/launch.h"
#include "cuda/row_kernels.cuh"

namespace minilvlm {
namespace cuda {

template <typename T, int N>
__global__ void __launch_bounds__(kElementwiseThreads)
    swiglu_forward_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ y, int64_t n) {
  for_each_pack<N>(n, [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float g[W], u[W];
    load_pack<W>(gate + i, g);
    load_pack<W>(up + i, u);
#pragma unroll
    for (int j = 0; j < W; ++j) g[j] = swiglu_value(g[j], u[j]);
    store_pack<W>(y + i, g);
  });
}

template <typename T, int N>
__global__ void __launch_bounds__(kElementwiseThreads)
    swiglu_backward_kernel(const T* __restrict__ grad, const T* __restrict__ gate, const T* __restrict__ up,
                           T* __restrict__ grad_gate, T* __restrict__ grad_up, int64_t n) {
  for_each_pack<N>(n, [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float dy[W], g[W], u[W];
    load_pack<W>(grad + i, dy);
    load_pack<W>(gate + i, g);
    load_pack<W>(up + i, u);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const SwigluGrads d = swiglu_grads(dy[j], g[j], u[j]);
      g[j] = d.gate;
      u[j] = d.up;
    }
    store_pack<W>(grad_gate + i, g);
    store_pack<W>(grad_up + i, u);
  });
}

}  // namespace cuda
}  // namespace minilvlm
