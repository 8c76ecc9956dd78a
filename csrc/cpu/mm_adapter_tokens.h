// mm_adapter_tokens.h: the per-token loops of the CPU mm_adapter kernels (included by
// csrc/cpu/mm_adapter.cpp only). The host side has already folded the router into per-sample
// effective up-projections, pre-multiplied by the scale s:
//   UsT[b] = s * sum_i w_bi U_i, stored transposed [r/groups, D] so that d is contiguous;
//   cs[b]  = s * sum_i w_bi c_i.
// Forward, per token:  h = A x + b_A;  out = x + cs + UsT^T h   (grouped: channel d reads h of its group).
// Backward, per token: dh = UsT dy (grouped);  dx = dy + A^T dh;  and the sums
//   dA += dh x^T,  db_A += dh,  G[b] += h dy^T (grouped),  S[b] += dy,
// from which the host derives dU_i, dc_i and the router's gradients.
// With dropout, h (after its bias) is masked and scaled where it is formed, and so is dh (the same
// mask: h's gradient passes the mask and the scale); the mask is regenerated from the token's
// index (common/philox.h), never stored.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

#include "common/philox.h"
#include "cpu/simd.h"

namespace minilvlm {
namespace mm {

// Pointers and sizes shared by every token of one call; Acc is float (fp32/bf16/fp16 x) or double.
template <typename Acc>
struct TokenArgs {
  const Acc* A;    // [r, D]
  const Acc* bA;   // [r]
  const Acc* UsT;  // [B, rg, D]
  const Acc* cs;   // [B, D]
  int64_t D, r, rg, Dg, groups;
  DropoutKeys dropout;  // on h; element (token, k) has flat index token * r + k
};

// Dropout on the rows of nt consecutive tokens, the first with flat token index token0 (b*T + t).
template <typename Acc>
inline void drop_rows(Acc* v, int64_t nt, uint64_t token0, const TokenArgs<Acc>& a) {
  if (!a.dropout.active) return;
  for (int64_t t = 0; t < nt; ++t) dropout_row(v + t * a.r, a.r, (token0 + t) * a.r, a.dropout);
}

// Per-thread sums of the backward pass (one sample's G and S are selected by the caller).
template <typename Acc>
struct Sums {
  Acc* dA;   // [r, D]
  Acc* dbA;  // [r]
  Acc* G;    // [rg, D] of the current sample
  Acc* S;    // [D] of the current sample
};

inline float to_acc(float v, float) { return v; }
inline float to_acc(c10::BFloat16 v, float) { return static_cast<float>(v); }
inline float to_acc(c10::Half v, float) { return static_cast<float>(v); }
inline double to_acc(double v, double) { return v; }

// ---------------------------------------------------------------------------------------
// portable loops (float64, and float32/bf16/fp16 on CPUs without AVX-512)

template <typename T, typename Acc>
void forward_token_portable(const T* x, T* out, const TokenArgs<Acc>& a, int64_t b, uint64_t token, Acc* h) {
  const int64_t D = a.D;
  for (int64_t k = 0; k < a.r; ++k) {
    Acc acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += a.A[k * D + d] * to_acc(x[d], Acc());
    h[k] = acc + a.bA[k];
  }
  drop_rows(h, 1, token, a);
  const Acc* UsT = a.UsT + b * a.rg * D;
  const Acc* cs = a.cs + b * D;
  for (int64_t d = 0; d < D; ++d) {
    const Acc* hg = h + (d / a.Dg) * a.rg;
    Acc v = cs[d];
    for (int64_t j = 0; j < a.rg; ++j) v += UsT[j * D + d] * hg[j];
    out[d] = static_cast<T>(to_acc(x[d], Acc()) + v);
  }
}

template <typename T, typename Acc>
void backward_token_portable(const T* x, const T* dy, T* dx, const TokenArgs<Acc>& a, int64_t b, uint64_t token,
                             const Sums<Acc>& sums, Acc* h, Acc* dh) {
  const int64_t D = a.D;
  const Acc* UsT = a.UsT + b * a.rg * D;
  for (int64_t k = 0; k < a.r; ++k) {
    Acc acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += a.A[k * D + d] * to_acc(x[d], Acc());
    h[k] = acc + a.bA[k];
    dh[k] = 0;
  }
  for (int64_t d = 0; d < D; ++d) {
    Acc* dhg = dh + (d / a.Dg) * a.rg;
    for (int64_t j = 0; j < a.rg; ++j) dhg[j] += UsT[j * D + d] * to_acc(dy[d], Acc());
  }
  drop_rows(h, 1, token, a);
  drop_rows(dh, 1, token, a);
  for (int64_t k = 0; k < a.r; ++k) sums.dbA[k] += dh[k];
  for (int64_t d = 0; d < D; ++d) {
    const Acc xd = to_acc(x[d], Acc()), gd = to_acc(dy[d], Acc());
    Acc g = gd;
    for (int64_t k = 0; k < a.r; ++k) {
      g += a.A[k * D + d] * dh[k];
      sums.dA[k * D + d] += dh[k] * xd;
    }
    dx[d] = static_cast<T>(g);
    const Acc* hg = h + (d / a.Dg) * a.rg;
    for (int64_t j = 0; j < a.rg; ++j) sums.G[j * D + d] += hg[j] * gd;
    sums.S[d] += gd;
  }
}

// ---------------------------------------------------------------------------------------
// AVX-512 loops (fp32, bf16 or fp16 tokens, fp32 arithmetic)

#ifdef MINILVLM_HAVE_AVX512_PATH
MINILVLM_AVX512_BEGIN

// Token tiles: every weight row the forward or backward reads (A, and the sample's UsT) is
// fetched from L2 once per tile of tokens rather than once per token, which is what bounded the
// one-token-at-a-time loops (the weights are 192 KB at D=4096, r=8; L1 holds 48 KB).
constexpr int64_t kTileTokens = 8;

// out[t*ldo + k] = rows[k*ld : k*ld+n] . v[t*ldv : t*ldv+n] for k < nrows, t < nv: blocks of four
// rows by four vectors, sixteen accumulators in registers, so each 16-lane step loads eight
// vectors for sixteen FMAs. A block past the last row or vector repeats the last one (valid memory,
// same speed) and its results are dropped.
template <typename T>
inline void dot_tile(const float* rows, int64_t ld, int64_t nrows, const T* v, int64_t ldv, int64_t nv, int64_t n,
                     float* out, int64_t ldo) {
  for (int64_t k0 = 0; k0 < nrows; k0 += 4) {
    const float* w[4];
    for (int j = 0; j < 4; ++j) w[j] = rows + std::min<int64_t>(k0 + j, nrows - 1) * ld;
    for (int64_t t0 = 0; t0 < nv; t0 += 4) {
      const T* u[4];
      for (int i = 0; i < 4; ++i) u[i] = v + std::min<int64_t>(t0 + i, nv - 1) * ldv;
      __m512 acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
      for (int64_t d = 0; d < n; d += 16) {
        const __mmask16 m = lanes(n - d);
        __m512 uv[4], wv[4];
        for (int i = 0; i < 4; ++i) uv[i] = load16(u[i] + d, m);
        for (int j = 0; j < 4; ++j) wv[j] = load16(w[j] + d, m);
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(uv[i], wv[j], acc[i][j]);
      }
      for (int i = 0; i < 4 && t0 + i < nv; ++i)
        for (int j = 0; j < 4 && k0 + j < nrows; ++j) out[(t0 + i) * ldo + k0 + j] = _mm512_reduce_add_ps(acc[i][j]);
    }
  }
}

// rows i < n (eight at a time): out[i*ldo + d..] = base_i + sum_{j<nw} W[j*D + d..] coef[i*ldc + j]
// on one 16-lane column block, base_i = add + (base ? base[i*ldo + d..] : 0). Eight independent
// FMA chains, so the 4-cycle FMA latency is hidden (one chain per token was latency-bound).
// Rows past n repeat row n-1 and are not stored.
template <typename T>
inline void combine_rows(T* out, const T* base, __m512 add, int64_t ldo, int64_t n, const float* W, int64_t D,
                         int64_t nw, const float* coef, int64_t ldc, int64_t d, __mmask16 m) {
  for (int64_t i0 = 0; i0 < n; i0 += 8) {
    __m512 acc[8];
    const float* c[8];
    for (int i = 0; i < 8; ++i) {
      const int64_t row = std::min<int64_t>(i0 + i, n - 1);
      c[i] = coef + row * ldc;
      acc[i] = base ? _mm512_add_ps(add, load16(base + row * ldo + d, m)) : add;
    }
    for (int64_t j = 0; j < nw; ++j) {
      const __m512 w = load16(W + j * D + d, m);
      for (int i = 0; i < 8; ++i) acc[i] = _mm512_fmadd_ps(w, _mm512_set1_ps(c[i][j]), acc[i]);
    }
    for (int i = 0; i < 8 && i0 + i < n; ++i) store16(out + (i0 + i) * ldo + d, acc[i], m);
  }
}

// sums[k*D + d..] += sum_{t<nt} coef[t*ldc + k] v[t*D + d..] for k < nk (eight rows at a time), on one
// column block: eight independent chains again. Rows past nk repeat row nk-1 and are not stored.
template <typename T>
inline void accumulate_rows(float* sums, int64_t D, int64_t nk, const float* coef, int64_t ldc, const T* v,
                            int64_t nt, int64_t d, __mmask16 m) {
  for (int64_t k0 = 0; k0 < nk; k0 += 8) {
    __m512 acc[8];
    int64_t k[8];
    for (int j = 0; j < 8; ++j) {
      k[j] = std::min<int64_t>(k0 + j, nk - 1);
      acc[j] = load16(sums + k[j] * D + d, m);
    }
    for (int64_t t = 0; t < nt; ++t) {
      const __m512 vv = load16(v + t * D + d, m);
      for (int j = 0; j < 8; ++j) acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(coef[t * ldc + k[j]]), vv, acc[j]);
    }
    for (int j = 0; j < 8 && k0 + j < nk; ++j) store16(sums + (k0 + j) * D + d, acc[j], m);
  }
}

// A tile of nt consecutive tokens of sample b: h for the whole tile, then out column block by
// column block, so each block of UsT and cs is loaded once per tile. h is [nt, r] scratch.
template <typename T>
void forward_tile_avx512(const T* x, T* out, int64_t nt, const TokenArgs<float>& a, int64_t b, uint64_t token0,
                         float* h) {
  const int64_t D = a.D, r = a.r, rg = a.rg;
  dot_tile(a.A, D, r, x, D, nt, D, h, r);
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t k = 0; k < r; ++k) h[t * r + k] += a.bA[k];
  drop_rows(h, nt, token0, a);
  const float* UsT = a.UsT + b * rg * D;
  const float* cs = a.cs + b * D;
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t hi = (g + 1) * a.Dg;
    for (int64_t d = g * a.Dg; d < hi; d += 16) {
      const __mmask16 m = lanes(hi - d);
      combine_rows(out, x, load16(cs + d, m), D, nt, UsT, D, rg, h + g * rg, r, d, m);
    }
  }
}

// A tile of nt consecutive tokens of sample b. Phase 1 finds h and dh for the tile (dot_tile);
// phase 2 walks the tile again, now in L2, column block by column block,
// so each block of the sums is loaded and stored once per tile rather than once per token.
// h and dh are [nt, r] scratch.
template <typename T>
void backward_tile_avx512(const T* x, const T* dy, T* dx, int64_t nt, const TokenArgs<float>& a, int64_t b,
                          uint64_t token0, const Sums<float>& sums, float* h, float* dh) {
  const int64_t D = a.D, r = a.r, rg = a.rg;
  const float* UsT = a.UsT + b * rg * D;
  dot_tile(a.A, D, r, x, D, nt, D, h, r);
  for (int64_t g = 0; g < a.groups; ++g) dot_tile(UsT + g * a.Dg, D, rg, dy + g * a.Dg, D, nt, a.Dg, dh + g * rg, r);
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t k = 0; k < r; ++k) h[t * r + k] += a.bA[k];
  drop_rows(h, nt, token0, a);
  drop_rows(dh, nt, token0, a);
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t k = 0; k < r; ++k) sums.dbA[k] += dh[t * r + k];
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t hi = (g + 1) * a.Dg;
    for (int64_t d = g * a.Dg; d < hi; d += 16) {
      const __mmask16 m = lanes(hi - d);
      combine_rows(dx, dy, _mm512_setzero_ps(), D, nt, a.A, D, r, dh, r, d, m);  // dx = dy + A^T dh
      accumulate_rows(sums.dA, D, r, dh, r, x, nt, d, m);                         // dA += dh x^T
      accumulate_rows(sums.G, D, rg, h + g * rg, r, dy, nt, d, m);                // G += h dy^T (this group)
      __m512 s0 = load16(sums.S + d, m), s1 = _mm512_setzero_ps();                // S += dy
      int64_t t = 0;
      for (; t + 1 < nt; t += 2) {
        s0 = _mm512_add_ps(s0, load16(dy + t * D + d, m));
        s1 = _mm512_add_ps(s1, load16(dy + (t + 1) * D + d, m));
      }
      if (t < nt) s0 = _mm512_add_ps(s0, load16(dy + t * D + d, m));
      store16(sums.S + d, _mm512_add_ps(s0, s1), m);
    }
  }
}

MINILVLM_AVX512_END
#endif

}  // namespace mm
}  // namespace minilvlm
