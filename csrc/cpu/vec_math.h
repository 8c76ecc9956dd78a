// vec_math.h: the lane arithmetic of the CPU row and activation kernels (rms_norm, layer_norm,
// swiglu, gelu), in two interchangeable sets, so that a row algorithm is written once as a template
// over the set and compiled for each path (cpu/simd.h, cpu/capability.h):
//   ScalarLanes   one float per step; the baseline ISA (any x86-64, or another architecture)
//   Avx512Lanes   16 floats per step in a zmm register, masked at the row's tail
// pick_rows<Algo, Args>() returns the loop over rows of Algo::on_row<Lanes> compiled for the path that
// cpu/capability.h chose.
// Each set has load/store between float and the storage type (float, c10::BFloat16, c10::Half),
// arithmetic, a horizontal sum, and round_to<T> (a value after a round trip through T's storage).
// The AVX-512 set also has exp, sigmoid and the normal CDF (vec::), the formulas of
// common/activation_math.h written with intrinsics because the compiler cannot vectorise libm's
// expf and erfcf; the baseline activation loops call common/activation_math.h directly.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cpu/capability.h"
#include "cpu/simd.h"

// For a .cpp file (never a header) with row algorithms written over a lane set: they are
// always_inline and only ever inlined into functions compiled for the set's ISA, but GCC still
// warns, where it instantiates them (the end of the file), that an AVX-512 vector crosses a
// function boundary of the baseline ABI (-Wpsabi). It never does. The rest of the file ignores it.
#define MINILVLM_LANE_TEMPLATES_FILE _Pragma("GCC diagnostic ignored \"-Wpsabi\"")

namespace minilvlm {

struct ScalarLanes {
  using V = float;
  static constexpr int64_t kWidth = 1;
  template <typename T>
  static float load(const T* p, int64_t) { return static_cast<float>(*p); }
  template <typename T>
  static void store(T* p, float v, int64_t) { *p = static_cast<T>(v); }
  static float splat(float v) { return v; }
  static float zero_tail(float v, int64_t) { return v; }
  static float add(float a, float b) { return a + b; }
  static float sub(float a, float b) { return a - b; }
  static float mul(float a, float b) { return a * b; }
  static float fmadd(float a, float b, float c) { return a * b + c; }  // two roundings: no FMA in the baseline ISA
  static float sum(float v) { return v; }
  template <typename T>
  static float round_to(float v) { return static_cast<float>(static_cast<T>(v)); }
};

}  // namespace minilvlm

#ifdef MINILVLM_HAVE_AVX512_PATH

namespace minilvlm {
namespace vec {

MINILVLM_AVX512_BEGIN

inline __m512 splat(float v) { return _mm512_set1_ps(v); }

// e^x to about 1 ulp: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n ln2 is exact enough),
// e^r by its degree-7 Taylor polynomial (truncation error < 6e-9), then the exponent by scalef,
// which also gives the right denormals and 0 at the low end. x is clamped to [-104, 88], so the
// result stays finite (e^88 = 1.7e38) and 1 / (1 + e^x) never meets an infinity; min/max take x as
// their second operand so that a NaN passes through.
inline __m512 exp(__m512 x) {
  x = _mm512_max_ps(splat(-104.0f), _mm512_min_ps(splat(88.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, splat(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, splat(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, splat(-2.12194440e-4f), r);
  __m512 p = splat(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, splat(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, splat(0.5f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f));
  p = _mm512_fmadd_ps(p, r, splat(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 1 / d for finite d >= 1: the 14-bit estimate and one Newton step (relative error about 2^-23),
// several times the throughput of a division.
inline __m512 reciprocal(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, splat(1.0f)), r);
}

inline __m512 sigmoid(__m512 a) {
  return reciprocal(_mm512_add_ps(splat(1.0f), exp(_mm512_sub_ps(_mm512_setzero_ps(), a))));
}

// Phi(x) = erfc(-x / sqrt2) / 2, with erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2) for z >= 0
// (a Chebyshev fit with relative error below 1.2e-7 over all z >= 0; erfc(-z) = 2 - erfc(z)).
// z is capped at 16 (erfc(16) is 0 in float32), so that t's reciprocal never meets an infinity.
inline __m512 normal_cdf(__m512 x) {
  const __m512 z = _mm512_min_ps(splat(16.0f), _mm512_mul_ps(_mm512_abs_ps(x), splat(0.70710678118654752f)));
  const __m512 t = reciprocal(_mm512_fmadd_ps(z, splat(0.5f), splat(1.0f)));
  __m512 p = splat(0.17087277f);
  p = _mm512_fmadd_ps(p, t, splat(-0.82215223f));
  p = _mm512_fmadd_ps(p, t, splat(1.48851587f));
  p = _mm512_fmadd_ps(p, t, splat(-1.13520398f));
  p = _mm512_fmadd_ps(p, t, splat(0.27886807f));
  p = _mm512_fmadd_ps(p, t, splat(-0.18628806f));
  p = _mm512_fmadd_ps(p, t, splat(0.09678418f));
  p = _mm512_fmadd_ps(p, t, splat(0.37409196f));
  p = _mm512_fmadd_ps(p, t, splat(1.00002368f));
  p = _mm512_fmadd_ps(p, t, splat(-1.26551223f));
  const __m512 half_erfc = _mm512_mul_ps(splat(0.5f), _mm512_mul_ps(t, exp(_mm512_fnmadd_ps(z, z, p))));
  const __mmask16 positive = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
  return _mm512_mask_sub_ps(half_erfc, positive, splat(1.0f), half_erfc);
}

// x after a round trip through T's storage (a store and a load that the CPU forwards): float32
// unchanged, bf16 and fp16 rounded to nearest even exactly as store16 rounds.
template <typename T>
inline __m512 round_to(__m512 x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    alignas(64) T buffer[16];
    store16(buffer, x, 0xffff);
    return load16(buffer, 0xffff);
  }
}

}  // namespace vec

struct Avx512Lanes {
  using V = __m512;
  static constexpr int64_t kWidth = 16;
  template <typename T>
  static __m512 load(const T* p, int64_t remaining) { return load16(p, lanes(remaining)); }
  template <typename T>
  static void store(T* p, __m512 v, int64_t remaining) { store16(p, v, lanes(remaining)); }
  static __m512 splat(float v) { return _mm512_set1_ps(v); }
  static __m512 zero_tail(__m512 v, int64_t remaining) { return _mm512_maskz_mov_ps(lanes(remaining), v); }
  static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
  static __m512 sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
  static __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
  static __m512 fmadd(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(__m512 v) { return _mm512_reduce_add_ps(v); }
  template <typename T>
  static __m512 round_to(__m512 v) { return vec::round_to<T>(v); }
};

MINILVLM_AVX512_END

}  // namespace minilvlm
#endif

namespace minilvlm {

// Algo::on_row<L>(args, row, acc) for rows [r0, r1): the row algorithm inlined into a loop compiled for
// the baseline ISA, and one compiled for AVX-512.
template <typename Algo, typename Args>
void rows_on_baseline(const Args& a, int64_t r0, int64_t r1, float* acc) {
  for (int64_t r = r0; r < r1; ++r) Algo::template on_row<ScalarLanes>(a, r, acc);
}
#ifdef MINILVLM_HAVE_AVX512_PATH
template <typename Algo, typename Args>
MINILVLM_AVX512 void rows_on_avx512(const Args& a, int64_t r0, int64_t r1, float* acc) {
  for (int64_t r = r0; r < r1; ++r) Algo::template on_row<Avx512Lanes>(a, r, acc);
}
#endif

template <typename Algo, typename Args>
using RowsFn = void (*)(const Args&, int64_t, int64_t, float*);

template <typename Algo, typename Args>
RowsFn<Algo, Args> pick_rows() {
#ifdef MINILVLM_HAVE_AVX512_PATH
  if (avx512_enabled()) return &rows_on_avx512<Algo, Args>;
#endif
  return &rows_on_baseline<Algo, Args>;
}

}  // namespace minilvlm
