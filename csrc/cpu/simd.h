// simd.h: the SIMD preamble of the CPU kernels, in one place.
//
//   MINILVLM_HAVE_AVX512_PATH, MINILVLM_HAVE_AVX512BF16_PATH   this compiler builds those paths
//   MINILVLM_AVX2, MINILVLM_AVX512                 attributes: compile one function for that ISA
//   MINILVLM_AVX512_BEGIN ... MINILVLM_AVX512_END  a region of functions compiled for AVX-512
//   MINILVLM_AVX512BF16_BEGIN ... MINILVLM_AVX512_END       the same with AVX512_BF16 (vdpbf16ps)
//   load16, store16, lanes                         masked 16-lane loads and stores between fp32
//                                                  registers and fp32, bf16 or fp16 memory
//
// Only those functions get the wider ISA; the rest of each file keeps the baseline, and which path
// runs is chosen at run time (cpu/capability.h), never at build time, so one binary runs on any
// x86-64 CPU. The load/store helpers carry the AVX-512 target themselves, so they inline into any
// function compiled for AVX-512.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define MINILVLM_HAVE_AVX512_PATH 1
// Compilers that know the avx512bf16 target (vdpbf16ps) also build the kernels' bf16 dot-product paths.
#if defined(__clang__) || __GNUC__ >= 10
#define MINILVLM_HAVE_AVX512BF16_PATH 1
#endif
#endif

#ifdef MINILVLM_HAVE_AVX512_PATH
#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#define MINILVLM_AVX2_ISA "avx2,fma"
#define MINILVLM_AVX512_ISA "avx512f,avx512bw,avx512vl,avx512dq,fma"
#define MINILVLM_AVX512BF16_ISA "avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16"

#define MINILVLM_AVX2 __attribute__((target(MINILVLM_AVX2_ISA)))
#define MINILVLM_AVX512 __attribute__((target(MINILVLM_AVX512_ISA)))

// _Pragma through one more macro, so that the ISA macro is expanded before it is stringized.
#define MINILVLM_PRAGMA_STRING(x) _Pragma(#x)
#define MINILVLM_PRAGMA(x) MINILVLM_PRAGMA_STRING(x)
// GCC 12 flags the deliberately undefined source operand inside its own AVX-512 intrinsics
// (_mm512_undefined_ps) as maybe-uninitialized; the warning is about the header, not our code.
#define MINILVLM_ISA_REGION_BEGIN(isa)      \
  MINILVLM_PRAGMA(GCC push_options)         \
  MINILVLM_PRAGMA(GCC target(isa))          \
  MINILVLM_PRAGMA(GCC diagnostic push)      \
  MINILVLM_PRAGMA(GCC diagnostic ignored "-Wmaybe-uninitialized")
#define MINILVLM_AVX512_BEGIN MINILVLM_ISA_REGION_BEGIN(MINILVLM_AVX512_ISA)
#define MINILVLM_AVX512BF16_BEGIN MINILVLM_ISA_REGION_BEGIN(MINILVLM_AVX512BF16_ISA)
#define MINILVLM_AVX512_END              \
  MINILVLM_PRAGMA(GCC diagnostic pop)    \
  MINILVLM_PRAGMA(GCC pop_options)

namespace minilvlm {

MINILVLM_AVX512_BEGIN

// Masked loads and stores, so the tail of a row takes the same vector math as its body.
inline __m512 load16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
inline __m512 load16(const c10::BFloat16* p, __mmask16 k) {
  const __m256i bits = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 load16(const c10::Half* p, __mmask16 k) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }

inline void store16(float* p, __m512 x, __mmask16 k) { _mm512_mask_storeu_ps(p, k, x); }
// Round to nearest even, NaN to 0x7fc0: the same bits as c10::BFloat16's conversion.
inline void store16(c10::BFloat16* p, __m512 x, __mmask16 k) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc00000));
  _mm256_mask_storeu_epi16(p, k, _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
}
inline void store16(c10::Half* p, __m512 x, __mmask16 k) {
  _mm256_mask_storeu_epi16(p, k, _mm512_maskz_cvtps_ph(0xffff, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// The first n lanes (n may exceed 16: then all of them).
inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

MINILVLM_AVX512_END

}  // namespace minilvlm
#endif
