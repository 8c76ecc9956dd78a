// mm_adapter_bf16.h: the bf16 forward of the CPU mm_adapter on CPUs with AVX512_BF16 (included by
// csrc/cpu/mm_adapter.cpp only; chosen at run time, cpu/capability.h).
//
// vdpbf16ps multiplies 32 bf16 pairs and adds each pair's sum into 16 fp32 lanes: twice the
// multiply-adds of an fp32 FMA per instruction, and on bf16 memory with no conversion. Measured on
// the big benchmark shape (D=4096, r=8), the fp32-FMA forward spent its time in arithmetic, not in
// memory traffic (one thread took ~4x a plain copy of the same rows), so the forward uses it for
// both projections:
//   down  h = A x + b_A    A rounded to bf16 once per call, packed [D/32][r rounded up to 4][32]
//                          so the rows one 32-lane step reads are adjacent; x is read as it lies;
//   up    out = round_bf16(x + cs + UsT^T h)   UsT rounded to bf16 and packed in pairs along r,
//                          [B][rg/2][D][2], h rounded to bf16 pairs; accumulated in fp32 with x
//                          and cs exact, then rounded once.
// This is what a bf16 matmul composition rounds too (bf16 weights, a bf16 h); the op's bf16 test
// holds it to the project's 2x rule. vdpbf16ps and vcvtneps2bf16 treat bf16/fp32 subnormals as
// zero (|v| < 1.2e-38) and give a NaN its own payload rather than 0x7fc0: below any error the rule
// can see.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

#include "cpu/simd.h"
#include "cpu/mm_adapter_tokens.h"

#ifdef MINILVLM_HAVE_AVX512BF16_PATH
namespace minilvlm {
namespace mm {

// The per-call bf16 operands of the forward (ATen tensors, built by pack_bf16).
struct Bf16Operands {
  at::Tensor A;   // [ceil(D/32), r4, 32] bf16, zero-padded (r4 = r rounded up to 4)
  at::Tensor Up;  // [B, rp, D, 2] bf16: Up[b][p][d] = (UsT[b][2p][d], UsT[b][2p+1][d]), 0 past rg
  int64_t r4, rp;
};

inline Bf16Operands pack_bf16(const at::Tensor& A, const at::Tensor& UsT, int64_t B, int64_t D, int64_t rg) {
  const int64_t r = A.size(0), r4 = (r + 3) / 4 * 4, chunks = (D + 31) / 32, rp = (rg + 1) / 2;
  const at::Tensor padded = at::constant_pad_nd(A, {0, chunks * 32 - D, 0, r4 - r});
  const at::Tensor Apk = padded.view({r4, chunks, 32}).permute({1, 0, 2}).to(at::kBFloat16).contiguous();
  const at::Tensor U = at::constant_pad_nd(UsT.view({B, rg, D}), {0, 0, 0, 2 * rp - rg});
  const at::Tensor Upk = U.view({B, rp, 2, D}).permute({0, 1, 3, 2}).to(at::kBFloat16).contiguous();
  return {Apk, Upk, r4, rp};
}

MINILVLM_AVX512BF16_BEGIN

// Tokens per forward tile: the tile's x rows (16 x 8 KB at D=4096) stay in L2 between the two projections.
constexpr int64_t kBf16TileTokens = 16;
// Tokens sharing each load of the up weight and cs (more would alias in L1: rows lie D*2 bytes apart).
constexpr int kUpTokens = 4;

inline __mmask32 lanes32(int64_t n) { return n >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << n) - 1); }

// h[t*r + k] = A_k . x_t for t < nt, k < r: blocks of four tokens by four rows, sixteen fp32
// accumulators, 32 bf16 products per instruction. Tokens past nt repeat the last one (dropped).
inline void down_tile_bf16(const c10::BFloat16* x, int64_t D, int64_t nt, const c10::BFloat16* Apk, int64_t r,
                           int64_t r4, float* h) {
  for (int64_t k0 = 0; k0 < r4; k0 += 4) {
    for (int64_t t0 = 0; t0 < nt; t0 += 4) {
      const c10::BFloat16* u[4];
      for (int i = 0; i < 4; ++i) u[i] = x + std::min<int64_t>(t0 + i, nt - 1) * D;
      __m512 acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
      const c10::BFloat16* w = Apk + k0 * 32;
      for (int64_t d = 0; d < D; d += 32, w += r4 * 32) {
        const __mmask32 m = lanes32(D - d);
        __m512bh xv[4], av[4];
        for (int i = 0; i < 4; ++i) xv[i] = (__m512bh)_mm512_maskz_loadu_epi16(m, u[i] + d);
        for (int j = 0; j < 4; ++j) av[j] = (__m512bh)_mm512_loadu_si512(w + j * 32);
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], av[j]);
      }
      for (int i = 0; i < 4 && t0 + i < nt; ++i)
        for (int j = 0; j < 4 && k0 + j < r; ++j) h[(t0 + i) * r + k0 + j] = _mm512_reduce_add_ps(acc[i][j]);
    }
  }
}

// out rows t < nt, channels [lo, hi) of one group: out = round(x + cs + sum_p Up[p] . hp_t[p]), where
// hp_t[p] is token t's bf16 pair p of this group (ldh pairs per token). kUpTokens tokens share each
// load of Up and cs; tokens past nt repeat the last one and are not stored.
inline void up_rows_bf16(const c10::BFloat16* x, c10::BFloat16* out, int64_t D, int64_t nt, int64_t lo, int64_t hi,
                         const float* cs, const uint32_t* Up, int64_t rp, const uint32_t* hp, int64_t ldh) {
  for (int64_t t0 = 0; t0 < nt; t0 += kUpTokens) {
    const uint32_t* hq[kUpTokens];
    const c10::BFloat16* xr[kUpTokens];
    for (int i = 0; i < kUpTokens; ++i) {
      const int64_t t = std::min<int64_t>(t0 + i, nt - 1);
      hq[i] = hp + t * ldh;
      xr[i] = x + t * D;
    }
    for (int64_t d = lo; d < hi; d += 16) {
      const __mmask16 m = lanes(hi - d);
      const __m512 c = load16(cs + d, m);
      __m512 acc[kUpTokens];
      for (int i = 0; i < kUpTokens; ++i) acc[i] = _mm512_add_ps(c, load16(xr[i] + d, m));
      for (int64_t p = 0; p < rp; ++p) {
        const __m512bh u = (__m512bh)_mm512_maskz_loadu_epi32(m, Up + p * D + d);
        for (int i = 0; i < kUpTokens; ++i)
          acc[i] = _mm512_dpbf16_ps(acc[i], u, (__m512bh)_mm512_set1_epi32(static_cast<int>(hq[i][p])));
      }
      for (int i = 0; i < kUpTokens && t0 + i < nt; ++i)
        _mm256_mask_storeu_epi16(out + (t0 + i) * D + d, m, (__m256i)_mm512_cvtneps_pbh(acc[i]));
    }
  }
}

// A tile of nt consecutive tokens of sample b, the first with flat index token0. h is [nt, r] fp32
// scratch, hp [nt, groups * rp].
inline void forward_tile_bf16(const c10::BFloat16* x, c10::BFloat16* out, int64_t nt, const TokenArgs<float>& a,
                              const Bf16Operands& p, int64_t b, uint64_t token0, float* h, uint32_t* hp) {
  const int64_t D = a.D, r = a.r, rg = a.rg, rp = p.rp, ldh = a.groups * rp;
  down_tile_bf16(x, D, nt, p.A.data_ptr<c10::BFloat16>(), r, p.r4, h);
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t k = 0; k < r; ++k) h[t * r + k] += a.bA[k];
  drop_rows(h, nt, token0, a);  // in fp32, before h is rounded to bf16 pairs
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t g = 0; g < a.groups; ++g)
      for (int64_t q = 0; q < rp; ++q) {  // pair q of group g: (h[2q], h[2q+1]) of the group, 0 past rg
        const int64_t k = g * rg + 2 * q;
        const uint32_t lo = c10::BFloat16(h[t * r + k]).x;
        const uint32_t hi = 2 * q + 1 < rg ? c10::BFloat16(h[t * r + k + 1]).x : 0u;
        hp[t * ldh + g * rp + q] = lo | (hi << 16);
      }
  const auto* Up = reinterpret_cast<const uint32_t*>(p.Up.data_ptr<c10::BFloat16>()) + b * rp * D;
  for (int64_t g = 0; g < a.groups; ++g)
    up_rows_bf16(x, out, D, nt, g * a.Dg, (g + 1) * a.Dg, a.cs + b * D, Up, rp, hp + g * rp, ldh);
}

MINILVLM_AVX512_END

}  // namespace mm
}  // namespace minilvlm
#endif
