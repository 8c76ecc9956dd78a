// mm_adapter_tokens.h: the per-token loops of the CPU mm_adapter kernels (included by
// csrc/cpu/mm_adapter.cpp only). The host side has already folded the router into per-sample
// effective up-projections, pre-multiplied by the scale s:
//   UsT[b] = s * sum_i w_bi U_i, stored transposed [r/groups, D] so that d is contiguous;
//   cs[b]  = s * sum_i w_bi c_i.
// Forward, per token:  h = A x + b_A;  out = x + cs + UsT^T h   (grouped: channel d reads h of its group).
// Backward, per token: dh = UsT dy (grouped);  dx = dy + A^T dh;  and the sums
//   dA += dh x^T,  db_A += dh,  G[b] += h dy^T (grouped),  S[b] += dy,
// from which the host derives dU_i, dc_i and the router's gradients.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

#include "cpu/avx512_io.h"

namespace minilvlm {
namespace mm {

// Pointers and sizes shared by every token of one call; Acc is float (fp32/bf16 x) or double.
template <typename Acc>
struct TokenArgs {
  const Acc* A;    // [r, D]
  const Acc* bA;   // [r]
  const Acc* UsT;  // [B, rg, D]
  const Acc* cs;   // [B, D]
  int64_t D, r, rg, Dg, groups;
};

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
inline double to_acc(double v, double) { return v; }

// ---------------------------------------------------------------------------------------
// portable loops (float64, and float32/bf16 on CPUs without AVX-512)

template <typename T, typename Acc>
void forward_token_portable(const T* x, T* out, const TokenArgs<Acc>& a, int64_t b, Acc* h) {
  const int64_t D = a.D;
  for (int64_t k = 0; k < a.r; ++k) {
    Acc acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += a.A[k * D + d] * to_acc(x[d], Acc());
    h[k] = acc + a.bA[k];
  }
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
void backward_token_portable(const T* x, const T* dy, T* dx, const TokenArgs<Acc>& a, int64_t b,
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
// AVX-512 loops (fp32 or bf16 tokens, fp32 arithmetic)

#ifdef MINILVLM_HAVE_AVX512_PATH
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// out[j] = rows[j*ld : j*ld+n] . v[0:n] for j < NK: one pass over v for NK rows.
template <int NK, typename T>
inline void dot_rows_fixed(const float* rows, int64_t ld, const T* v, int64_t n, float* out) {
  __m512 acc[NK];
  for (int j = 0; j < NK; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = lanes(n - i);
    const __m512 vv = load16(v + i, k);
    for (int j = 0; j < NK; ++j) acc[j] = _mm512_fmadd_ps(load16(rows + j * ld + i, k), vv, acc[j]);
  }
  for (int j = 0; j < NK; ++j) out[j] = _mm512_reduce_add_ps(acc[j]);
}

// Any number of rows, eight per pass (the vector v stays in L1 between passes).
template <typename T>
inline void dot_rows(const float* rows, int64_t ld, const T* v, int64_t n, int64_t count, float* out) {
  for (int64_t j = 0; j < count; j += 8) {
    const float* r = rows + j * ld;
    switch (std::min<int64_t>(8, count - j)) {
      case 8: dot_rows_fixed<8>(r, ld, v, n, out + j); break;
      case 7: dot_rows_fixed<7>(r, ld, v, n, out + j); break;
      case 6: dot_rows_fixed<6>(r, ld, v, n, out + j); break;
      case 5: dot_rows_fixed<5>(r, ld, v, n, out + j); break;
      case 4: dot_rows_fixed<4>(r, ld, v, n, out + j); break;
      case 3: dot_rows_fixed<3>(r, ld, v, n, out + j); break;
      case 2: dot_rows_fixed<2>(r, ld, v, n, out + j); break;
      default: dot_rows_fixed<1>(r, ld, v, n, out + j); break;
    }
  }
}

template <typename T>
void forward_token_avx512(const T* x, T* out, const TokenArgs<float>& a, int64_t b, float* h) {
  const int64_t D = a.D;
  dot_rows(a.A, D, x, D, a.r, h);
  for (int64_t k = 0; k < a.r; ++k) h[k] += a.bA[k];
  const float* UsT = a.UsT + b * a.rg * D;
  const float* cs = a.cs + b * D;
  for (int64_t g = 0; g < a.groups; ++g) {
    const float* hg = h + g * a.rg;
    const int64_t hi = (g + 1) * a.Dg;
    for (int64_t d = g * a.Dg; d < hi; d += 16) {
      const __mmask16 k = lanes(hi - d);
      __m512 v = load16(cs + d, k);
      for (int64_t j = 0; j < a.rg; ++j) v = _mm512_fmadd_ps(load16(UsT + j * D + d, k), _mm512_set1_ps(hg[j]), v);
      store16(out + d, _mm512_add_ps(load16(x + d, k), v), k);
    }
  }
}

// A tile of nt consecutive tokens of sample b. Phase 1 finds h and dh per token (one pass over
// each row of x and dy); phase 2 walks the tile again, now in L2, column block by column block,
// so each block of the sums is loaded and stored once per tile rather than once per token.
// h and dh are [nt, r] scratch.
template <typename T>
void backward_tile_avx512(const T* x, const T* dy, T* dx, int64_t nt, const TokenArgs<float>& a, int64_t b,
                          const Sums<float>& sums, float* h, float* dh) {
  const int64_t D = a.D, r = a.r, rg = a.rg;
  const float* UsT = a.UsT + b * rg * D;
  for (int64_t t = 0; t < nt; ++t) {
    float* ht = h + t * r;
    float* dht = dh + t * r;
    dot_rows(a.A, D, x + t * D, D, r, ht);
    for (int64_t k = 0; k < r; ++k) ht[k] += a.bA[k];
    for (int64_t g = 0; g < a.groups; ++g)
      dot_rows(UsT + g * a.Dg, D, dy + t * D + g * a.Dg, a.Dg, rg, dht + g * rg);
    for (int64_t k = 0; k < r; ++k) sums.dbA[k] += dht[k];
  }
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t hi = (g + 1) * a.Dg;
    for (int64_t d = g * a.Dg; d < hi; d += 16) {
      const __mmask16 m = lanes(hi - d);
      for (int64_t t = 0; t < nt; ++t) {  // dx = dy + A^T dh
        __m512 v = load16(dy + t * D + d, m);
        for (int64_t k = 0; k < r; ++k)
          v = _mm512_fmadd_ps(load16(a.A + k * D + d, m), _mm512_set1_ps(dh[t * r + k]), v);
        store16(dx + t * D + d, v, m);
      }
      for (int64_t k = 0; k < r; ++k) {  // dA += dh x^T
        __m512 acc = load16(sums.dA + k * D + d, m);
        for (int64_t t = 0; t < nt; ++t)
          acc = _mm512_fmadd_ps(_mm512_set1_ps(dh[t * r + k]), load16(x + t * D + d, m), acc);
        store16(sums.dA + k * D + d, acc, m);
      }
      for (int64_t j = 0; j < rg; ++j) {  // G += h dy^T, this group's h entries
        __m512 acc = load16(sums.G + j * D + d, m);
        for (int64_t t = 0; t < nt; ++t)
          acc = _mm512_fmadd_ps(_mm512_set1_ps(h[t * r + g * rg + j]), load16(dy + t * D + d, m), acc);
        store16(sums.G + j * D + d, acc, m);
      }
      __m512 s = load16(sums.S + d, m);  // S += dy
      for (int64_t t = 0; t < nt; ++t) s = _mm512_add_ps(s, load16(dy + t * D + d, m));
      store16(sums.S + d, s, m);
    }
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

}  // namespace mm
}  // namespace minilvlm
