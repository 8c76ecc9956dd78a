// checks.h: the entry point of racecheck and memcheck for the instrumentation hooks
// (access_hooks.cpp). The checks themselves are in checks.cpp; runtime code only.
#pragma once

#include <atomic>
#include <cstdint>

#include "emu/runtime.h"

namespace minilvlm_emu {
namespace detail {

enum AccessKind : uint8_t { kRead = 1, kWrite = 2, kAtomic = 4 };

extern std::atomic<int> g_checked_launches;  // launches running with racecheck or memcheck on
extern std::atomic<bool> g_instrumented;     // some kernel source was compiled with the hooks

void check_access(Runner& r, Fiber* f, uintptr_t a, unsigned size, uint8_t kind, uintptr_t pc);

// Every instrumented load, store and atomic comes here first: accesses outside of a kernel thread,
// and all of them while no launch has checks on, cost a load and a branch or two.
inline void on_access(const volatile void* p, unsigned size, uint8_t kind, uintptr_t pc) {
  if (g_checked_launches.load(std::memory_order_relaxed) == 0) return;
  const Tls& t = tls;
  if (!t.fiber || t.fiber->in_runtime || !t.runner || !t.runner->checks) return;
  check_access(*t.runner, t.fiber, reinterpret_cast<uintptr_t>(p), size, kind, pc);
}

}  // namespace detail
}  // namespace minilvlm_emu
