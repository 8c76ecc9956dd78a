// rope_math.h: what the CPU and CUDA kernels of rope_ / rope_backward share below ATen: the shape
// of one call (RopeGeometry, a kernel argument by value) and the rotation of one channel pair.
// Filled in by common/rope_host.h. No ATen, no CUDA runtime.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace minilvlm {

// One tensor the op rotates, [B, H, T, head_dim] with any element strides for the first three
// dimensions and contiguous channels. heads == 0 marks an absent k.
struct RopeSide {
  int64_t heads = 0;
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;

  MINILVLM_HD int64_t offset(int64_t b, int64_t h, int64_t t) const { return b * stride_b + h * stride_h + t * stride_t; }
};

// The rotate-half layout of Hugging Face checkpoints: channel i pairs with i + half for i < half,
// rotary_dim = 2 * half <= head_dim, channels from rotary_dim on pass through. cos and sin are
// [B or 1, T, half] fp32 tables with contiguous last dimension (cos_stride_b is 0 for one row
// shared by the batch).
struct RopeGeometry {
  int64_t batch = 0, tokens = 0, head_dim = 0, half = 0;
  int64_t cos_stride_b = 0, cos_stride_t = 0;
  RopeSide q, k;

  MINILVLM_HD int64_t table_offset(int64_t b, int64_t t) const { return b * cos_stride_b + t * cos_stride_t; }
  MINILVLM_HD int64_t rest() const { return head_dim - 2 * half; }
};

// (x1, x2) rotated by the angle whose cosine is c and sine s: the reference's order of operations,
// (x1 c - x2 s, x2 c + x1 s). The rotation by -angle (the backward) passes -s.
template <typename Acc>
MINILVLM_HD void rope_rotate_pair(Acc x1, Acc x2, Acc c, Acc s, Acc& o1, Acc& o2) {
  o1 = x1 * c - x2 * s;
  o2 = x2 * c + x1 * s;
}

}  // namespace minilvlm
