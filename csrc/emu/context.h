// context.h: switching between fiber stacks for the SIMT emulator. On x86-64 a few lines of
// assembly save and restore the callee-saved registers (plus MXCSR and the x87 control word);
// elsewhere, or with -DMINILVLM_EMU_UCONTEXT, ucontext does it (about 10x slower: it makes a
// signal-mask system call per switch). In an AddressSanitizer build every switch is announced to
// ASan (__sanitizer_start/finish_switch_fiber), which otherwise takes a fiber's stack for the OS
// thread's and mis-handles noreturn calls and exceptions on it.
#pragma once

#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define MINILVLM_EMU_ASAN_FIBERS 1
#endif

#if defined(__x86_64__) && !defined(MINILVLM_EMU_UCONTEXT)
#define MINILVLM_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#if MINILVLM_EMU_ASM_SWITCH
extern "C" void minilvlm_emu_switch(void** save_sp, void* new_sp);
#endif

namespace minilvlm_emu {
namespace detail {

struct Ctx {
#if MINILVLM_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
  void (*entry)(void*) = nullptr;
  void* arg = nullptr;
#endif
#if MINILVLM_EMU_ASAN_FIBERS
  // The stack this context runs on: set by ctx_init for a fiber, learned by ctx_started for the
  // OS thread's own context that first switched to a fiber.
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;
#endif
};

// Prepare ctx so that the first switch to it runs entry(arg) on the stack [stack_lo, stack_lo +
// size). entry must never return: it switches away for the last time instead.
void ctx_init(Ctx* ctx, char* stack_lo, size_t size, void (*entry)(void*), void* arg);

// Save the running context in from and resume to.
inline void ctx_switch(Ctx* from, Ctx* to) {
#if MINILVLM_EMU_ASAN_FIBERS
  __sanitizer_start_switch_fiber(&from->fake_stack, to->stack_bottom, to->stack_size);
#endif
#if MINILVLM_EMU_ASM_SWITCH
  minilvlm_emu_switch(&from->sp, to->sp);
#else
  swapcontext(&from->uc, &to->uc);
#endif
#if MINILVLM_EMU_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(from->fake_stack, nullptr, nullptr);
#endif
}

// First thing a new fiber does: completes the switch into it and records, in `from` (the context
// that started it), the stack that context runs on.
inline void ctx_started(Ctx* from) {
#if MINILVLM_EMU_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(nullptr, &from->stack_bottom, &from->stack_size);
#else
  (void)from;
#endif
}

}  // namespace detail
}  // namespace minilvlm_emu
