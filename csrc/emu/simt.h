// simt.h: run CUDA kernels on the CPU. Included by cuda/launch.h when the kernel headers
// are compiled by a host compiler with -DMINILVLM_EMU (see docs/emulator.md).
//
// Every CUDA thread of a block becomes a fiber; the fibers of one block run cooperatively on
// one OS thread and switch only at synchronisation points (__syncthreads, warp primitives),
// while different blocks may run on different OpenMP threads. The runtime lives in simt.cpp.
#pragma once

#if defined(__CUDACC__)
#error "csrc/emu/simt.h is the CPU emulation of CUDA; nvcc builds include the real runtime via cuda/launch.h"
#endif

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------
// Keywords. CUDA's host_defines.h already turns __global__/__device__/__host__/__shared__ into
// nothing for a host compiler and __forceinline__ into always_inline; we only fix what differs.
// One block runs on one OS thread at a time and blocks on one OS thread run one after the other,
// so a thread_local static is exactly "one copy per block".
#undef __shared__
#define __shared__ static thread_local
#undef __constant__
#define __constant__
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace minilvlm_emu {

// Scheduling seed: 0 resumes runnable fibers in thread order; any other value shuffles that
// order per scheduling round (deterministically from seed and block index), so shared-memory
// races show up as seed-dependent results.
void set_seed(uint64_t seed);
uint64_t get_seed();
// OpenMP threads used to run blocks in parallel; 0 = the OpenMP default, 1 = serial.
void set_num_threads(int n);
int get_num_threads();

namespace detail {

struct Runner;
struct Fiber;

// Per-OS-thread view of the fiber currently running (updated on every resume).
struct Tls {
  uint3 thread_idx;
  uint3 block_idx;
  uint3 block_dim;
  uint3 grid_dim;
  unsigned char* dyn_smem;
  Fiber* fiber;  // null outside of a kernel
  Runner* runner;
};
inline thread_local Tls tls{};

enum WarpOp : int {
  kShflIdx = 0,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kSyncwarp,
  kReduceAdd,
  kReduceMin,
  kReduceMax,
  kMatchAny,
};

// Block barrier. kind: 0 plain, 1 count, 2 and, 3 or. Returns the reduced predicate.
int block_barrier(int kind, int pred, const char* file, int line);
// Warp primitive: value bytes in `in` (size <= 16), result bytes written to `out`;
// `arg` is the source lane / delta / lane mask, `pred` the vote predicate or integer operand.
// Returns the ballot / vote / reduction result for the non-shuffle operations.
unsigned warp_op(WarpOp op, unsigned mask, const void* in, unsigned size, int arg, int width,
                 long long pred, void* out, const char* file, int line);
unsigned active_mask();
// Abort the current fiber's block with an error (like a device trap). Throws
// std::runtime_error when called outside of a kernel.
[[noreturn]] void trap(const char* what, const char* file, int line);
[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const char* func);

struct LaunchDesc {
  const char* name;   // stringified kernel expression
  const void* fn;     // kernel function address (for symbol lookup in messages)
  dim3 grid;
  dim3 block;
  size_t smem;
  void (*body)(void*);  // runs the kernel once for the current fiber
  void* ctx;
};
// Runs the whole grid synchronously; throws std::runtime_error on any error.
void run_grid(const LaunchDesc& desc);
// Throws std::runtime_error(msg) unless `ok`; for launch-time checks in templates.
void launch_check(bool ok, const char* name, const char* what);

template <class G>
inline dim3 to_dim3(const char* name, G g) {
  if constexpr (std::is_integral<G>::value) {
    launch_check(static_cast<long long>(g) > 0 && static_cast<long long>(g) <= INT_MAX, name,
                 "launch dimension given as an integer must be in [1, 2^31-1]");
    return dim3(static_cast<unsigned>(g));
  } else {
    return dim3(g);
  }
}

template <class... P>
struct Launcher {
  const char* name;
  void (*fn)(P...);
  dim3 grid;
  dim3 block;
  size_t smem;

  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "MINILVLM_LAUNCH: wrong number of kernel arguments");
    // Kernel arguments are copied into the launch, as CUDA does; every thread then receives
    // its own copy (a kernel may modify its by-value parameters).
    struct Ctx {
      void (*fn)(P...);
      std::tuple<std::decay_t<P>...> params;
    };
    Ctx ctx{fn, std::tuple<std::decay_t<P>...>(static_cast<std::decay_t<P>>(std::forward<A>(args))...)};
    LaunchDesc d;
    d.name = name;
    d.fn = reinterpret_cast<const void*>(fn);
    d.grid = grid;
    d.block = block;
    d.smem = smem;
    d.body = [](void* p) {
      const Ctx& c = *static_cast<const Ctx*>(p);
      std::apply(c.fn, c.params);
    };
    d.ctx = &ctx;
    run_grid(d);
  }
};

template <class G, class B, class S, class... P>
inline Launcher<P...> make_launcher(const char* name, void (*fn)(P...), G grid, B block, size_t smem, S) {
  launch_check(fn != nullptr, name, "kernel pointer is null");
  return Launcher<P...>{name, fn, to_dim3(name, grid), to_dim3(name, block), smem};
}

template <class T>
inline T shfl(WarpOp op, unsigned mask, const T& v, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value, "warp shuffle of a non-trivially-copyable type");
  static_assert(sizeof(T) <= 16, "warp shuffle of a type larger than 16 bytes");
  alignas(16) unsigned char out[16];
  warp_op(op, mask, &v, sizeof(T), arg, width, 0, out, file, line);
  T r = v;
  std::memcpy(static_cast<void*>(&r), out, sizeof(T));
  return r;
}

template <class T>
inline T atomic_cas_loop_add(T* p, T v) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T desired;
  do {
    desired = static_cast<T>(old + v);
  } while (!__atomic_compare_exchange(p, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

// F(old) -> new; returns the old value.
template <class T, class F>
inline T atomic_update(T* p, F f) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T desired;
  do {
    desired = f(old);
  } while (!__atomic_compare_exchange(p, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

}  // namespace detail
}  // namespace minilvlm_emu

// ---------------------------------------------------------------------------------------------
// Launch and dynamic shared memory.
#define MINILVLM_LAUNCH(kernel, grid, block, smem, stream) \
  ::minilvlm_emu::detail::make_launcher(#kernel, kernel, grid, block, smem, stream)
// A per-block buffer of the launch's dynamic smem bytes, 16-byte aligned, filled with 0xFF
// bytes (NaN for float/half/bf16) at the start of every block.
#define MINILVLM_DYNAMIC_SMEM(T, name) \
  T* name = reinterpret_cast<T*>(::minilvlm_emu::detail::tls.dyn_smem)

// ---------------------------------------------------------------------------------------------
// Built-in variables (read-only).
#define threadIdx (static_cast<const uint3&>(::minilvlm_emu::detail::tls.thread_idx))
#define blockIdx (static_cast<const uint3&>(::minilvlm_emu::detail::tls.block_idx))
#define blockDim (static_cast<const uint3&>(::minilvlm_emu::detail::tls.block_dim))
#define gridDim (static_cast<const uint3&>(::minilvlm_emu::detail::tls.grid_dim))
#define warpSize 32

// Device-side assert aborts the block like a device trap (the launch then raises) instead of
// aborting the process. Re-including <cassert> after this header restores the libc assert.
#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) \
  ((e) ? (void)0 : ::minilvlm_emu::detail::assert_fail(#e, __FILE__, __LINE__, __func__))
#endif

// ---------------------------------------------------------------------------------------------
// Synchronisation.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::minilvlm_emu::detail::block_barrier(0, 0, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::block_barrier(1, pred != 0, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::block_barrier(2, pred != 0, file, line);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::block_barrier(3, pred != 0, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kSyncwarp, mask, nullptr, 0, 0, 32, 0,
                                  nullptr, file, line);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::minilvlm_emu::detail::trap("__trap() called", file, line);
}
inline void __nanosleep(unsigned) {}

// ---------------------------------------------------------------------------------------------
// Warp primitives: each is a barrier among the lanes of `mask` plus an exchange.
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::shfl(::minilvlm_emu::detail::kShflIdx, mask, var, srcLane, width, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::shfl(::minilvlm_emu::detail::kShflUp, mask, var, static_cast<int>(delta),
                                      width, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::shfl(::minilvlm_emu::detail::kShflDown, mask, var, static_cast<int>(delta),
                                      width, file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::shfl(::minilvlm_emu::detail::kShflXor, mask, var, laneMask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kBallot, mask, nullptr, 0, 0, 32, pred != 0,
                                         nullptr, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kAny, mask, nullptr, 0, 0, 32,
                                                          pred != 0, nullptr, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kAll, mask, nullptr, 0, 0, 32,
                                                          pred != 0, nullptr, file, line));
}
inline unsigned __activemask() { return ::minilvlm_emu::detail::active_mask(); }

// sm_80 integer warp reductions.
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kReduceAdd, mask, nullptr, 0, 0, 32, v, nullptr,
                                         file, line);
}
inline int __reduce_add_sync(unsigned mask, int v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kReduceAdd, mask, nullptr, 0, 0,
                                                          32, v, nullptr, file, line));
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kReduceMin, mask, nullptr, 0, 0, 0, v, nullptr,
                                         file, line);
}
inline int __reduce_min_sync(unsigned mask, int v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kReduceMin, mask, nullptr, 0, 0,
                                                          1, v, nullptr, file, line));
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return ::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kReduceMax, mask, nullptr, 0, 0, 0, v, nullptr,
                                         file, line);
}
inline int __reduce_max_sync(unsigned mask, int v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::minilvlm_emu::detail::warp_op(::minilvlm_emu::detail::kReduceMax, mask, nullptr, 0, 0,
                                                          1, v, nullptr, file, line));
}

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
