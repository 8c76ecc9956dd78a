// context.h: switching between fiber stacks for the SIMT emulator. On x86-64 a few lines of
// assembly save and restore the callee-saved registers (plus MXCSR and the x87 control word);
// elsewhere, or with -DMINILVLM_EMU_UCONTEXT, ucontext does it (about 10x slower: it makes a
// signal-mask system call per switch).
#pragma once

#include <cstddef>

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
};

// Prepare ctx so that the first switch to it runs entry(arg) on the stack [stack_lo, stack_lo +
// size). entry must never return: it switches away for the last time instead.
void ctx_init(Ctx* ctx, char* stack_lo, size_t size, void (*entry)(void*), void* arg);

// Save the running context in from and resume to.
inline void ctx_switch(Ctx* from, Ctx* to) {
#if MINILVLM_EMU_ASM_SWITCH
  minilvlm_emu_switch(&from->sp, to->sp);
#else
  swapcontext(&from->uc, &to->uc);
#endif
}

}  // namespace detail
}  // namespace minilvlm_emu
