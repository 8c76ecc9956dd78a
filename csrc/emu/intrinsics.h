// intrinsics.h: the CUDA device intrinsics of the SIMT emulator that are plain host functions:
// atomics (real atomics, since blocks run in parallel), cache-hinted loads and stores, bit casts,
// integer and float intrinsics, CUDA's min/max overloads. Included by simt.h only.
#pragma once

#if !defined(MINILVLM_EMU_SIMT_H_)
#error "include emu/simt.h (through cuda/launch.h), not emu/intrinsics.h"
#endif

// ---------------------------------------------------------------------------------------------
// Atomics: real atomics, since blocks run in parallel on several OS threads.
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* p, float v) { return ::minilvlm_emu::detail::atomic_cas_loop_add(p, v); }
inline double atomicAdd(double* p, double v) { return ::minilvlm_emu::detail::atomic_cas_loop_add(p, v); }
inline __half atomicAdd(__half* p, __half v) {
  return ::minilvlm_emu::detail::atomic_update(p, [v](__half o) { return __float2half(__half2float(o) + __half2float(v)); });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  return ::minilvlm_emu::detail::atomic_update(
      p, [v](__nv_bfloat16 o) { return __float2bfloat16(__bfloat162float(o) + __bfloat162float(v)); });
}
inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) {
  return __atomic_exchange_n(p, v, __ATOMIC_RELAXED);
}
inline float atomicExch(float* p, float v) {
  float old;
  __atomic_exchange(p, &v, &old, __ATOMIC_RELAXED);
  return old;
}
template <class T>
inline T minilvlm_emu_cas_(T* p, T compare, T val) {
  __atomic_compare_exchange_n(p, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // the old value either way
}
inline int atomicCAS(int* p, int c, int v) { return minilvlm_emu_cas_(p, c, v); }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { return minilvlm_emu_cas_(p, c, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
  return minilvlm_emu_cas_(p, c, v);
}
inline unsigned short atomicCAS(unsigned short* p, unsigned short c, unsigned short v) {
  return minilvlm_emu_cas_(p, c, v);
}
#define MINILVLM_EMU_MINMAX_(T)                                                                   \
  inline T atomicMax(T* p, T v) {                                                                 \
    return ::minilvlm_emu::detail::atomic_update(p, [v](T o) { return o < v ? v : o; });          \
  }                                                                                               \
  inline T atomicMin(T* p, T v) {                                                                 \
    return ::minilvlm_emu::detail::atomic_update(p, [v](T o) { return v < o ? v : o; });          \
  }
MINILVLM_EMU_MINMAX_(int)
MINILVLM_EMU_MINMAX_(unsigned)
MINILVLM_EMU_MINMAX_(long long)
MINILVLM_EMU_MINMAX_(unsigned long long)
#undef MINILVLM_EMU_MINMAX_
// Not a CUDA built-in (kernels usually build it from atomicCAS); provided with fmaxf semantics.
inline float atomicMax(float* p, float v) {
  return ::minilvlm_emu::detail::atomic_update(p, [v](float o) { return std::fmax(o, v); });
}
inline float atomicMin(float* p, float v) {
  return ::minilvlm_emu::detail::atomic_update(p, [v](float o) { return std::fmin(o, v); });
}
#define MINILVLM_EMU_BITOP_(name, builtin)                                                               \
  inline int name(int* p, int v) { return builtin(p, v, __ATOMIC_RELAXED); }                             \
  inline unsigned name(unsigned* p, unsigned v) { return builtin(p, v, __ATOMIC_RELAXED); }              \
  inline unsigned long long name(unsigned long long* p, unsigned long long v) {                          \
    return builtin(p, v, __ATOMIC_RELAXED);                                                              \
  }
MINILVLM_EMU_BITOP_(atomicAnd, __atomic_fetch_and)
MINILVLM_EMU_BITOP_(atomicOr, __atomic_fetch_or)
MINILVLM_EMU_BITOP_(atomicXor, __atomic_fetch_xor)
#undef MINILVLM_EMU_BITOP_
inline unsigned atomicInc(unsigned* p, unsigned limit) {
  return ::minilvlm_emu::detail::atomic_update(p, [limit](unsigned o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
  return ::minilvlm_emu::detail::atomic_update(p, [limit](unsigned o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}

// ---------------------------------------------------------------------------------------------
// Loads, bit casts, integer intrinsics.
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }

namespace minilvlm_emu {
namespace detail {
template <class To, class From>
inline To bitcast(From f) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between types of different sizes");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}
}  // namespace detail
}  // namespace minilvlm_emu

inline int __float_as_int(float x) { return ::minilvlm_emu::detail::bitcast<int>(x); }
inline unsigned __float_as_uint(float x) { return ::minilvlm_emu::detail::bitcast<unsigned>(x); }
inline float __int_as_float(int x) { return ::minilvlm_emu::detail::bitcast<float>(x); }
inline float __uint_as_float(unsigned x) { return ::minilvlm_emu::detail::bitcast<float>(x); }
inline long long __double_as_longlong(double x) { return ::minilvlm_emu::detail::bitcast<long long>(x); }
inline double __longlong_as_double(long long x) { return ::minilvlm_emu::detail::bitcast<double>(x); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}

// ---------------------------------------------------------------------------------------------
// Float intrinsics missing from the host side of CUDA's headers (glibc already declares
// __expf, __logf, __powf, __sinf, __cosf, __exp10f, ...). Results follow IEEE round-to-nearest,
// so they can differ from the GPU's fast approximations in the last bits.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float fdividef(float x, float y) { return x / y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __fma_rn(double x, double y, double z) { return std::fma(x, y, z); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float __tanhf(float x) { return std::tanh(x); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(std::nearbyint(x)); }

// min/max overloads as CUDA declares them for device code.
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long min(long a, unsigned long b) { return min(static_cast<unsigned long>(a), b); }
inline unsigned long min(unsigned long a, long b) { return min(a, static_cast<unsigned long>(b)); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long min(long long a, unsigned long long b) { return min(static_cast<unsigned long long>(a), b); }
inline unsigned long long min(unsigned long long a, long long b) { return min(a, static_cast<unsigned long long>(b)); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double min(float a, double b) { return std::fmin(static_cast<double>(a), b); }
inline double min(double a, float b) { return std::fmin(a, static_cast<double>(b)); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline unsigned long max(long a, unsigned long b) { return max(static_cast<unsigned long>(a), b); }
inline unsigned long max(unsigned long a, long b) { return max(a, static_cast<unsigned long>(b)); }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline unsigned long long max(long long a, unsigned long long b) { return max(static_cast<unsigned long long>(a), b); }
inline unsigned long long max(unsigned long long a, long long b) { return max(a, static_cast<unsigned long long>(b)); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
inline double max(double a, float b) { return std::fmax(a, static_cast<double>(b)); }
