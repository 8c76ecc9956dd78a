// patch_embed_math.h: what the CPU and CUDA kernels of patch_embed share below ATen: the shape of
// one call (PatchGeometry, a kernel argument by value) and the indexing of its pixels. Filled in
// by common/patch_embed_host.h. No ATen, no CUDA runtime.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace minilvlm {

struct PatchGeometry {
  int64_t batch = 0, channels = 0, height = 0, width = 0;
  int64_t patch = 0;     // p
  int64_t grid_w = 0;    // patches per image row, width / p
  int64_t patches = 0;   // N = (height / p) * (width / p)
  int64_t tokens = 0;    // T = N + has_cls
  int64_t row_len = 0;   // K = channels * p * p
  int64_t dim = 0;       // D
  bool has_cls = false;
  bool channels_last = false;

  // Element offset of pixel (b, c, y, x) in NCHW or NHWC.
  MINILVLM_HD int64_t pixel_offset(int64_t b, int64_t c, int64_t y, int64_t x) const {
    return channels_last ? ((b * height + y) * width + x) * channels + c : ((b * channels + c) * height + y) * width + x;
  }
};

}  // namespace minilvlm
