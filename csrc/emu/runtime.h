// runtime.h: the SIMT emulator's internal state, shared by its runtime sources: simt.cpp (fibers,
// scheduler, barriers, warp exchanges, launches), sync_check.cpp (barrier and warp-primitive
// errors) and checks.cpp (racecheck and memcheck). Kernel code never includes it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "emu/context.h"
#include "emu/simt.h"

namespace minilvlm_emu {
namespace detail {

enum State : uint8_t { kRunnable, kAtBarrier, kAtWarp, kExited, kTrapped };

enum CheckBits : unsigned { kCheckRace = 1u, kCheckMemory = 2u };

struct Fiber {
  Ctx ctx;
  char* stack_lo = nullptr;
  uint3 tid{0, 0, 0};
  int id = 0;
  State state = kRunnable;
  // What the fiber waits at (valid while state is kAtBarrier / kAtWarp).
  int op = 0;
  const char* file = nullptr;
  int line = 0;
  unsigned mask = 0;
  unsigned size = 0;
  int arg = 0;
  int width = 32;
  long long pred = 0;
  unsigned result = 0;
  alignas(16) unsigned char val[16];
  alignas(16) unsigned char out[16];
  // Racecheck: a vector clock over the lanes of this thread's warp. clock[l] is the latest
  // warp-synchronisation count of lane l that this thread has synchronised with; its own entry
  // stamps its shared-memory accesses.
  uint32_t clock[32];
  // Set while this fiber runs emulator code (a barrier, a warp primitive, a check): the linker may
  // give the runtime the instrumented copy of an inline library function (std::string's, say),
  // whose accesses are the emulator's, not the kernel's, and must not be checked.
  bool in_runtime = false;
};

// Marks the current fiber as inside the emulator for the scope's lifetime.
class RuntimeScope {
 public:
  explicit RuntimeScope(Fiber* f) : f_(f), was_(f ? f->in_runtime : false) {
    if (f_) f_->in_runtime = true;
  }
  ~RuntimeScope() {
    if (f_) f_->in_runtime = was_;
  }
  RuntimeScope(const RuntimeScope&) = delete;
  RuntimeScope& operator=(const RuntimeScope&) = delete;

 private:
  Fiber* f_;
  bool was_;
};

struct LaunchChecks;  // checks.cpp: the buffers of a launch and their shadow (memcheck, racecheck)
struct SharedShadow;  // checks.cpp: one runner's shadow of shared memory (racecheck)
struct SharedShadowDeleter {
  void operator()(SharedShadow* s) const;  // checks.cpp, where the type is complete
};

// One per OS thread: the fibers, their stacks, and the state of the block being run.
struct Runner {
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::vector<char*> stacks;  // mmap'd regions (guard page + stack)
  std::vector<int> order;
  Ctx sched;
  unsigned char* smem = nullptr;
  size_t smem_cap = 0;

  const LaunchDesc* desc = nullptr;
  uint3 bidx{0, 0, 0};
  long long block_lin = 0;
  int n = 0;
  int exited = 0;
  std::vector<unsigned> warp_gone;     // per warp: lanes that have exited or trapped
  std::vector<int> warp_waiting;       // per warp: lanes waiting at a warp primitive
  // block barrier
  int arrived = 0;
  int bar_kind = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  bool bar_mismatch = false;
  int bar_count = 0;
  int bar_result = 0;
  // error
  bool failed = false;
  std::string error;
  // access checks of the running launch (checks.cpp)
  unsigned checks = 0;
  LaunchChecks* launch_checks = nullptr;
  uint32_t epoch = 0;  // shared-memory epoch: a new one at every block start and __syncthreads
  std::unique_ptr<SharedShadow, SharedShadowDeleter> shadow;

  Runner();
  ~Runner();
  void ensure(int count, size_t smem_bytes);
  std::string where() const;  // "kernel 'k' block (x,y,z)"
  void fail(Fiber* f, const std::string& what);     // "minilvlm emu: <where> thread (..): what"
  void fail_check(const std::string& message);       // a check's message as it stands
  void release_barrier();
  void complete_warp(int wbase, unsigned mask);
  bool run_block(const LaunchDesc& d, long long lin) noexcept;
};

size_t stack_bytes();
// Fails the running block with `message` and ends the calling fiber (like a device trap).
[[noreturn]] void abort_fiber(const std::string& message);

// sync_check.cpp: the message for a block in which no fiber can run but some have not exited,
// and the eager check of a warp primitive whose mask names lanes that have exited.
std::string describe_stuck_block(const Runner& r);
void check_warp_mask_active(Runner& r, Fiber* f, int op, unsigned mask, const char* file, int line);
// A shuffle lane reads a lane outside the mask: the value is undefined in CUDA.
std::string describe_shuffle_outside_mask(const Runner& r, int wbase, int lane, int src, unsigned mask);

// checks.cpp: the scheduler's hooks into racecheck and memcheck. Cheap no-ops when r.checks is 0.
void checks_begin_block(Runner& r);
void checks_barrier_released(Runner& r);
void checks_warp_synchronised(Runner& r, int wbase, unsigned mask);
// Per launch: resolve the launch's buffers (memcheck fails here on an untracked pointer
// argument); the result lives until checks_end_launch.
LaunchChecks* checks_begin_launch(const LaunchDesc& d, unsigned checks);
void checks_end_launch(LaunchChecks* lc);
unsigned enabled_checks();

// tracked_alloc.cpp: the extent [lo, hi) of the live CPU tensor allocation that holds p (p == hi
// counts: a pointer one past the end); false for memory the tracking allocator did not hand out.
bool find_tracked_allocation(uintptr_t p, uintptr_t* lo, uintptr_t* hi);

}  // namespace detail
}  // namespace minilvlm_emu
