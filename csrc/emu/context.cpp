// context.cpp: fiber stack set-up and the x86-64 switch routine (see context.h).
#include "emu/context.h"

#include <cstdint>

#if MINILVLM_EMU_ASM_SWITCH
// minilvlm_emu_switch(save_sp, new_sp): push the callee-saved registers and the FP control words,
// store the stack pointer in *save_sp, load new_sp and pop the same from there. A new fiber's
// stack is laid out by ctx_init so that the first switch "returns" into the trampoline, which
// calls entry (r13) with its argument (r12).
extern "C" void minilvlm_emu_trampoline();
asm(R"(
  .pushsection .text
  .p2align 4
  .globl minilvlm_emu_switch
  .hidden minilvlm_emu_switch
  .type minilvlm_emu_switch, @function
minilvlm_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size minilvlm_emu_switch, .-minilvlm_emu_switch

  .p2align 4
  .globl minilvlm_emu_trampoline
  .hidden minilvlm_emu_trampoline
  .type minilvlm_emu_trampoline, @function
minilvlm_emu_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size minilvlm_emu_trampoline, .-minilvlm_emu_trampoline
  .popsection
)");
#endif

namespace minilvlm_emu {
namespace detail {

#if !MINILVLM_EMU_ASM_SWITCH
namespace {
// makecontext passes int arguments only: the Ctx pointer travels as two halves.
void uc_entry(unsigned hi, unsigned lo) {
  auto* ctx = reinterpret_cast<Ctx*>((static_cast<uintptr_t>(hi) << 32) | static_cast<uintptr_t>(lo));
  ctx->entry(ctx->arg);
}
}  // namespace
#endif

void ctx_init(Ctx* ctx, char* stack_lo, size_t size, void (*entry)(void*), void* arg) {
#if MINILVLM_EMU_ASAN_FIBERS
  ctx->stack_bottom = stack_lo;
  ctx->stack_size = size;
  ctx->fake_stack = nullptr;
#endif
#if MINILVLM_EMU_ASM_SWITCH
  uintptr_t top = reinterpret_cast<uintptr_t>(stack_lo + size) & ~static_cast<uintptr_t>(15);
  uint64_t* ret_slot = reinterpret_cast<uint64_t*>(top - 24);  // trampoline starts 16-aligned
  ret_slot[0] = reinterpret_cast<uint64_t>(&minilvlm_emu_trampoline);
  uint64_t* sp = ret_slot - 7;
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  sp[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpcw) << 32);
  sp[1] = 0;                                       // r15
  sp[2] = 0;                                       // r14
  sp[3] = reinterpret_cast<uint64_t>(entry);       // r13: entry
  sp[4] = reinterpret_cast<uint64_t>(arg);         // r12: its argument
  sp[5] = 0;                                       // rbx
  sp[6] = 0;                                       // rbp
  ctx->sp = sp;
#else
  ctx->entry = entry;
  ctx->arg = arg;
  getcontext(&ctx->uc);
  ctx->uc.uc_stack.ss_sp = stack_lo;
  ctx->uc.uc_stack.ss_size = size;
  ctx->uc.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(ctx);
  makecontext(&ctx->uc, reinterpret_cast<void (*)()>(&uc_entry), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
#endif
}

}  // namespace detail
}  // namespace minilvlm_emu
