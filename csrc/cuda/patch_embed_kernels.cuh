// patch_embed_kernels.cuh: the two CUDA kernels of minilvlm::patch_embed. Device code only, no
// ATen: nvcc compiles it into csrc/cuda/patch_embed.cu and g++ into the emulator build
// (csrc/emu/patch_embed_emu.cpp), both through cuda/patch_embed_launch.h, so the code under test is
// the code that ships.
//
// The op is pixel kernel -> GEMM (cuBLAS through ATen) -> epilogue kernel:
//   patch_rows_kernel     one block per patch row (grid-stride over rows), threads over the
//                         K = C*p*p elements of the row: read pixel, x * scale[c] + shift[c],
//                         write the row in the weight's dtype; class-token rows are zeros.
//                         Writes are coalesced; NCHW reads come in runs of p pixels.
//   patch_epilogue_kernel one block per output row, threads over D, in place:
//                         y = (y + bias) + pos[t] on patch rows, y = cls + pos[0] on class rows.
#pragma once

#include <cstdint>

#include "common/patch_embed_math.h"
#include "cuda/convert.cuh"
#include "cuda/launch.h"

namespace minilvlm {
namespace cuda {

constexpr int kPatchThreads = 128;
constexpr int kPatchMaxChannels = 16;  // per-channel constants travel in the kernel argument

// Per-channel x * scale + shift, i.e. (x / 255 - mean) / std for uint8 pixels; Acc is float for
// float32/bf16/fp16 rows, double for float64.
template <typename Acc>
struct PatchNorm {
  Acc scale[kPatchMaxChannels];
  Acc shift[kPatchMaxChannels];
};

template <typename Pix, typename Out, typename Acc>
__global__ void __launch_bounds__(kPatchThreads)
    patch_rows_kernel(const Pix* __restrict__ pixels, Out* __restrict__ rows, const PatchGeometry g,
                      const __grid_constant__ PatchNorm<Acc> norm) {
  const int p = static_cast<int>(g.patch);
  const int pp = p * p;
  const int K = static_cast<int>(g.row_len);
  const int64_t count = g.batch * g.tokens;
  for (int64_t r = blockIdx.x; r < count; r += gridDim.x) {
    Out* dst = rows + r * K;
    const int64_t b = r / g.tokens;
    const int64_t t = r - b * g.tokens;
    if (g.has_cls && t == 0) {  // the class token's row: zeros, so the GEMM writes 0 there
      for (int k = threadIdx.x; k < K; k += blockDim.x) store(dst + k, Acc(0));
      continue;
    }
    const int64_t n = t - (g.has_cls ? 1 : 0);
    const int64_t y0 = n / g.grid_w * p, x0 = (n % g.grid_w) * p;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const int c = k / pp;  // Conv2d weight order (c, ky, kx)
      const int ky = (k - c * pp) / p;
      const int kx = k - c * pp - ky * p;
      const Acc x = widen<Acc>(pixels[g.pixel_offset(b, c, y0 + ky, x0 + kx)]);
      store(dst + k, x * norm.scale[c] + norm.shift[c]);
    }
  }
}

template <typename Out, typename Acc>
__global__ void __launch_bounds__(kPatchThreads)
    patch_epilogue_kernel(Out* __restrict__ out, const Out* __restrict__ bias, const Out* __restrict__ pos,
                          const Out* __restrict__ cls, const PatchGeometry g) {
  const int D = static_cast<int>(g.dim);
  const int64_t count = g.batch * g.tokens;
  for (int64_t r = blockIdx.x; r < count; r += gridDim.x) {
    Out* y = out + r * D;
    const int64_t t = r % g.tokens;
    if (g.has_cls && t == 0) {  // class token: cls + pos[0]; the GEMM wrote zeros here
      for (int d = threadIdx.x; d < D; d += blockDim.x)
        store(y + d, widen<Acc>(cls[d]) + (pos ? widen<Acc>(pos[d]) : Acc(0)));
      continue;
    }
    const Out* pos_row = pos ? pos + t * D : nullptr;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      Acc v = widen<Acc>(y[d]);
      if (bias) v += widen<Acc>(bias[d]);  // (x @ W^T + b) + pos, the reference's order
      if (pos_row) v += widen<Acc>(pos_row[d]);
      store(y + d, v);
    }
  }
}

}  // namespace cuda
}  // namespace minilvlm
