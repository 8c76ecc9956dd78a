// access_hooks.cpp: the functions that GCC's -fsanitize=thread instrumentation calls, defined by
// the emulator instead of by libtsan (which is never linked). The kernel sources of minilvlm._emu
// are compiled with that instrumentation (the "emu" sources of csrc/sources.txt; the runtime,
// "emu-runtime", is not), so every load, store and atomic of a kernel reaches on_access
// (checks.h) with its address, size, kind and code address. Atomics still happen, here, as
// sequentially consistent operations. Compiled without the instrumentation, like all runtime code.
#include <cstdint>
#include <mutex>

#include "emu/checks.h"

using minilvlm_emu::detail::kAtomic;
using minilvlm_emu::detail::kRead;
using minilvlm_emu::detail::kWrite;
using minilvlm_emu::detail::on_access;

#define MINILVLM_EMU_PC_ reinterpret_cast<uintptr_t>(__builtin_return_address(0))

extern "C" {

// Every instrumented translation unit calls __tsan_init from a constructor.
void __tsan_init() { minilvlm_emu::detail::g_instrumented.store(true); }
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}

#define MINILVLM_EMU_PLAIN_(n)                                                                   \
  void __tsan_read##n(void* p) { on_access(p, n, kRead, MINILVLM_EMU_PC_); }                     \
  void __tsan_write##n(void* p) { on_access(p, n, kWrite, MINILVLM_EMU_PC_); }                   \
  void __tsan_unaligned_read##n(void* p) { on_access(p, n, kRead, MINILVLM_EMU_PC_); }           \
  void __tsan_unaligned_write##n(void* p) { on_access(p, n, kWrite, MINILVLM_EMU_PC_); }         \
  void __tsan_volatile_read##n(void* p) { on_access(p, n, kRead, MINILVLM_EMU_PC_); }            \
  void __tsan_volatile_write##n(void* p) { on_access(p, n, kWrite, MINILVLM_EMU_PC_); }          \
  void __tsan_unaligned_volatile_read##n(void* p) { on_access(p, n, kRead, MINILVLM_EMU_PC_); }  \
  void __tsan_unaligned_volatile_write##n(void* p) { on_access(p, n, kWrite, MINILVLM_EMU_PC_); }
MINILVLM_EMU_PLAIN_(1)
MINILVLM_EMU_PLAIN_(2)
MINILVLM_EMU_PLAIN_(4)
MINILVLM_EMU_PLAIN_(8)
MINILVLM_EMU_PLAIN_(16)
#undef MINILVLM_EMU_PLAIN_

void __tsan_read_range(void* p, unsigned long size) {
  on_access(p, static_cast<unsigned>(size), kRead, MINILVLM_EMU_PC_);
}
void __tsan_write_range(void* p, unsigned long size) {
  on_access(p, static_cast<unsigned>(size), kWrite, MINILVLM_EMU_PC_);
}

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// The memory order argument is ignored: every atomic runs sequentially consistent.
#define MINILVLM_EMU_ATOMIC_(bits, T)                                                                        \
  T __tsan_atomic##bits##_load(const volatile T* a, int) {                                                   \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                             \
  }                                                                                                          \
  void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                                                \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                                \
  }                                                                                                          \
  T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                                                \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                      \
  }                                                                                                          \
  T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) {                                               \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                       \
  }                                                                                                          \
  T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) {                                               \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                       \
  }                                                                                                          \
  T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) {                                               \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                       \
  }                                                                                                          \
  T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) {                                                \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                        \
  }                                                                                                          \
  T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) {                                               \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                       \
  }                                                                                                          \
  T __tsan_atomic##bits##_fetch_nand(volatile T* a, T v, int) {                                              \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                      \
  }                                                                                                          \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                    \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                  \
  }                                                                                                          \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                      \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                   \
  }                                                                                                          \
  T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                          \
    on_access(a, sizeof(T), kAtomic, MINILVLM_EMU_PC_);                                                      \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                        \
    return c;                                                                                                \
  }
MINILVLM_EMU_ATOMIC_(8, uint8_t)
MINILVLM_EMU_ATOMIC_(16, uint16_t)
MINILVLM_EMU_ATOMIC_(32, uint32_t)
MINILVLM_EMU_ATOMIC_(64, uint64_t)
#undef MINILVLM_EMU_ATOMIC_

// 128-bit atomics: no kernel uses them; they exist so that a source that does still loads. A lock
// makes them atomic with respect to each other (not to plain accesses, as on a GPU without them).
namespace {
std::mutex& lock128() {
  static std::mutex mu;
  return mu;
}
}  // namespace
using uint128 = unsigned __int128;
uint128 __tsan_atomic128_load(const volatile uint128* a, int) {
  on_access(a, 16, kAtomic, MINILVLM_EMU_PC_);
  std::lock_guard<std::mutex> g(lock128());
  return *a;
}
void __tsan_atomic128_store(volatile uint128* a, uint128 v, int) {
  on_access(a, 16, kAtomic, MINILVLM_EMU_PC_);
  std::lock_guard<std::mutex> g(lock128());
  *a = v;
}
int __tsan_atomic128_compare_exchange_strong(volatile uint128* a, uint128* c, uint128 v, int, int) {
  on_access(a, 16, kAtomic, MINILVLM_EMU_PC_);
  std::lock_guard<std::mutex> g(lock128());
  if (*a == *c) {
    *a = v;
    return 1;
  }
  *c = *a;
  return 0;
}
int __tsan_atomic128_compare_exchange_weak(volatile uint128* a, uint128* c, uint128 v, int mo, int fmo) {
  return __tsan_atomic128_compare_exchange_strong(a, c, v, mo, fmo);
}

}  // extern "C"
