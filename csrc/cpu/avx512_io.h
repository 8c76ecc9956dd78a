// avx512_io.h: masked 16-lane loads and stores between float32 registers and fp32, bf16 or fp16
// memory, for the AVX-512 paths of the CPU kernels. The functions carry the AVX-512 target
// attribute themselves, so a kernel compiled under the same `#pragma GCC target` inlines them,
// while the rest of the file keeps the baseline ISA (runtime dispatch picks the path).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define MINILVLM_HAVE_AVX512_PATH 1
// Compilers that know the avx512bf16 target (vdpbf16ps) also build the kernels' bf16 dot-product paths.
#if defined(__clang__) || __GNUC__ >= 10
#define MINILVLM_HAVE_AVX512BF16_PATH 1
#endif

namespace minilvlm {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
// GCC 12 flags the deliberately undefined source operand inside its own AVX-512 intrinsics
// (_mm512_undefined_ps) as maybe-uninitialized; the warning is about the header, not our code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Masked loads and stores, so the tail of a segment takes the same vector math as its body.
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

#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace minilvlm
#endif
