// simt.h: run CUDA kernels on the CPU. Included by cuda/launch.h when the kernel headers
// are compiled by a host compiler with -DMINILVLM_EMU (see docs/emulator.md).
//
// Every CUDA thread of a block becomes a fiber; the fibers of one block run cooperatively on
// one OS thread and switch only at synchronisation points (__syncthreads, warp primitives),
// while different blocks may run on different OpenMP threads. The runtime lives in simt.cpp;
// the access checks (racecheck, memcheck) in checks.cpp, fed by the compiler's instrumentation
// of the kernel sources (see docs/emulator.md, "Checks").
#pragma once
#define MINILVLM_EMU_SIMT_H_ 1

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
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

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

// What a failed launch throws: a race, an out-of-bounds access, a barrier or warp primitive that
// not every thread reaches, an assert or __trap. Python sees minilvlm._emu.EmulatorError, a
// RuntimeError; the message starts with the check that fired ("race: ", "memcheck: ",
// "synccheck: ") or with "minilvlm emu: " for asserts, traps and invalid launches.
struct EmulatorError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Access checks of every launch (docs/emulator.md, "Checks"): a comma-separated list of "race"
// (shared-memory hazards within a block, global-memory conflicts between blocks) and "memory"
// (accesses outside every buffer of the launch); "all" or "none". The default comes from
// MINILVLM_EMU_CHECKS. Sync checks are always on. Throws std::invalid_argument on an unknown name,
// and std::runtime_error when this build has no access instrumentation (an ASan build).
void set_checks(const std::string& checks);
std::string get_checks();
bool checks_available();

// Launch configurations of a real GPU (csrc/emu/gpu_profiles.cpp): "A100", "H100", or "" for the
// emulator's own small grids. EmuTarget then bounds grid-stride kernels as CudaTarget would on that
// GPU (SM count x the op's blocks per SM).
struct GpuProfile {
  const char* name;
  int sm_count;
  int max_threads_per_sm;
  int max_blocks_per_sm;
  int smem_per_sm;         // bytes
  int smem_per_block;      // bytes a block may use without cudaFuncSetAttribute opt-in
  int regs_per_sm;
};
void set_gpu(const std::string& name);  // throws std::invalid_argument for an unknown name
const GpuProfile* current_gpu();        // null: the emulator's own grids
// Blocks of `threads` threads and `smem` bytes of shared memory that one SM holds at once.
int resident_blocks(const GpuProfile& gpu, int threads, size_t smem);

// The last launches of this process, newest last (for tests of GPU-sized grids): the kernel's
// name as error messages give it, "'k' (ns::k<float>)", with its grid, block and dynamic smem.
struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  size_t smem;
};
std::vector<LaunchRecord> recent_launches();  // at most 64
void clear_recent_launches();
// Launches run and the wall time spent in them since the last reset (for measuring the checks).
struct LaunchStats {
  long long launches;
  double seconds;
};
LaunchStats launch_stats();
void reset_launch_stats();

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

// One kernel argument as the launch copied it: memcheck takes the buffers of a launch from the
// pointers among (and inside) its arguments.
struct ArgDesc {
  const void* addr;
  size_t size;
  const char* type;  // mangled type name (typeid)
  bool pointer;
};

struct LaunchDesc {
  const char* name;   // stringified kernel expression
  const void* fn;     // kernel function address (for symbol lookup in messages)
  dim3 grid;
  dim3 block;
  size_t smem;
  void (*body)(void*);  // runs the kernel once for the current fiber
  void* ctx;
  size_t ctx_size;      // the copied arguments live in [ctx, ctx + ctx_size)
  const ArgDesc* args;
  int nargs;
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

template <class Tuple, size_t... I>
inline void describe_args(const Tuple& t, ArgDesc* out, std::index_sequence<I...>) {
  ((out[I] = ArgDesc{&std::get<I>(t), sizeof(std::tuple_element_t<I, Tuple>),
                     typeid(std::tuple_element_t<I, Tuple>).name(),
                     std::is_pointer<std::tuple_element_t<I, Tuple>>::value}),
   ...);
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
    ArgDesc arg_desc[sizeof...(P) + 1];
    describe_args(ctx.params, arg_desc, std::index_sequence_for<P...>{});
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
    d.ctx_size = sizeof(ctx);
    d.args = arg_desc;
    d.nargs = static_cast<int>(sizeof...(P));
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

#include "emu/intrinsics.h"  // atomics, loads, bit casts, math, min/max
