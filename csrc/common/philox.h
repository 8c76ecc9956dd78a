// philox.h: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
// the counter-based generator behind the dropout of fused ops, and the keep/drop decision built on
// it. Host+device (common/hd.h): the CPU kernels, the CUDA kernels and the emulator call the same
// code, so a dropout mask is a pure function of (seed, offset, element index) and needs no state,
// no storage between forward and backward, and no order of evaluation.
//
// Stream layout: the key is the 64-bit seed; the 128-bit counter is (i / 4, offset), and element i
// takes 32-bit word i % 4 of that block. minilvlm/ops/mm_adapter.py (dropout_keep_mask) computes
// the same words in plain PyTorch for the reference; both are checked against the published
// known-answer vectors of Philox4x32-10.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace minilvlm {

struct Philox4 {
  uint32_t v[4];
};

MINILVLM_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Ten rounds of the Philox4x32 bijection of `counter` under `key` (k0, k1). Scalars rather than an
// indexed array, so that nvcc keeps all of it in registers.
MINILVLM_HD Philox4 philox4x32_10(Philox4 counter, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = counter.v[0], c1 = counter.v[1], c2 = counter.v[2], c3 = counter.v[3];
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kMul0, c0, hi0, lo0);
    philox_mulhilo(kMul1, c2, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Word `lane` (0..3) of a block, by selects: a run-time index into the array would put it in local
// memory on the GPU.
MINILVLM_HD uint32_t philox_word(const Philox4& block, uint64_t lane) {
  return lane == 0 ? block.v[0] : lane == 1 ? block.v[1] : lane == 2 ? block.v[2] : block.v[3];
}

// The parameters of one dropout call: drop probability p enters as an integer threshold so that
// every backend (and the plain-PyTorch reference) makes exactly the same keep/drop decision.
struct DropoutKeys {
  uint64_t seed, offset;
  uint32_t keep_below;  // keep element i iff (word_i >> 8) < keep_below; 2^24 keeps everything
  double scale;         // 1 / (1 - p), the factor of the kept elements
  bool active;          // p > 0
};

// keep_below = round((1 - p) * 2^24): the 24 high bits of a word are a uniform integer in [0, 2^24).
inline DropoutKeys dropout_keys(double p, int64_t seed, int64_t offset) {
  const double keep = (1.0 - p) * 16777216.0;
  return {static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint32_t>(keep + 0.5),
          1.0 / (1.0 - p), p > 0.0};
}

// The four words of elements 4 * block ... 4 * block + 3.
MINILVLM_HD Philox4 dropout_block(const DropoutKeys& keys, uint64_t block) {
  const Philox4 counter{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                         static_cast<uint32_t>(keys.offset), static_cast<uint32_t>(keys.offset >> 32)}};
  return philox4x32_10(counter, static_cast<uint32_t>(keys.seed), static_cast<uint32_t>(keys.seed >> 32));
}

// Whether element `index` of the masked tensor is kept (one Philox block per call: for one element
// per GPU thread).
MINILVLM_HD bool dropout_keep(const DropoutKeys& keys, uint64_t index) {
  return (philox_word(dropout_block(keys, index >> 2), index & 3) >> 8) < keys.keep_below;
}

// v[j] = kept(first + j) ? v[j] * scale : 0 for j < n, one Philox block per four elements (for a
// thread that walks a row).
template <typename T>
MINILVLM_HD void dropout_row(T* v, int64_t n, uint64_t first, const DropoutKeys& keys) {
  const T scale = static_cast<T>(keys.scale);
  Philox4 word{};
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t i = first + static_cast<uint64_t>(j);
    if (j == 0 || (i & 3) == 0) word = dropout_block(keys, i >> 2);
    v[j] = (philox_word(word, i & 3) >> 8) < keys.keep_below ? v[j] * scale : T(0);
  }
}

}  // namespace minilvlm
