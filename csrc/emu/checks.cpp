// checks.cpp: racecheck and memcheck, the emulator's access checks (docs/emulator.md, "Checks").
//
// The kernel sources are compiled with GCC's thread-sanitizer instrumentation but without its
// runtime: every load, store and atomic of a kernel calls a __tsan_* function, and this file
// defines them (access_hooks.cpp holds the long list). So the checks see every access of the
// shipped kernel code without a change to it. An access by a kernel thread is classified:
//   its own stack, the launch's copied arguments, the module's static data: not checked;
//   dynamic or static __shared__ memory: racecheck within the block (below); dynamic shared
//     memory past the launch's size is a memcheck error;
//   a buffer of the launch (the tracked tensor allocation behind a pointer among its arguments):
//     racecheck between blocks; an access that runs past its end is a memcheck error;
//   anything else: a memcheck error naming the nearest buffer.
// Racecheck in shared memory keeps, per byte, the last write and two reads of the current barrier
// epoch, each with its thread, a vector-clock stamp and its code address. Two accesses of
// different threads in one epoch conflict (unless both are atomics or both reads) when no
// __syncwarp or warp primitive of their warp has ordered them (CUDA's rule for warp-synchronous
// code). In global memory it keeps, per byte, the block that wrote it and the block(s) that read
// it during the launch: blocks of one launch are never ordered, so two blocks touching a byte that
// one of them writes is a race.
#include "emu/checks.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "emu/report.h"
#include "emu/runtime.h"

namespace minilvlm_emu {
namespace detail {

std::atomic<int> g_checked_launches{0};

namespace {

size_t g_stack_size = 0;

struct Access {
  uint32_t epoch;  // 0: none
  uint32_t stamp;
  uint32_t pc;     // code offset in the module
  uint16_t tid;    // linear thread id in the block
  uint8_t kind;
  uint8_t unused;
};

struct Cell {
  Access w, r1, r2;  // the last write (or atomic) and two reads of distinct threads
};

struct Buffer {
  uintptr_t lo, hi;
  int arg;
  const char* type;
  uint64_t* state = nullptr;  // per byte: writer block+1 (bit 31: atomic) | reader block+1 << 32
  uint64_t* who = nullptr;    // per byte: the last writer as (pc << 32 | tid), best effort, for the report
  size_t map_bytes = 0;
};

constexpr uint32_t kSeveralBlocks = 0xffffffffu;
constexpr uint32_t kAtomicBit = 0x80000000u;

const char* kind_name(uint8_t kind) { return kind == kRead ? "read" : kind == kWrite ? "write" : "atomic"; }
const char* kind_verb(uint8_t kind) { return kind == kRead ? "reads" : kind == kWrite ? "writes" : "atomically updates"; }
const char* kind_past(uint8_t kind) { return kind == kRead ? "read" : kind == kWrite ? "wrote" : "atomically updated"; }

std::string hex(uintptr_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(v));
  return buf;
}

dim3 block_of(const LaunchDesc& d, long long lin) {
  return dim3(static_cast<unsigned>(lin % d.grid.x), static_cast<unsigned>((lin / d.grid.x) % d.grid.y),
              static_cast<unsigned>(lin / (static_cast<long long>(d.grid.x) * d.grid.y)));
}

std::string arg_name(int arg, const char* type) {
  return "kernel argument " + std::to_string(arg) + " (" + demangle(type) + ")";
}

}  // namespace

struct LaunchChecks {
  const LaunchDesc* desc = nullptr;
  unsigned checks = 0;
  uintptr_t ctx_lo = 0, ctx_size = 0;
  std::vector<Buffer> buffers;  // sorted by lo

  ~LaunchChecks() {
    for (Buffer& b : buffers)
      if (b.state) munmap(b.state, b.map_bytes);
  }
};

struct SharedShadow {
  uintptr_t tls_lo = 0, tls_size = 0;  // this OS thread's copy of the module's TLS segment
  uintptr_t tls_var = 0;               // the emulator's own thread_local (threadIdx & co), not shared
  std::vector<Cell> dynamic_cells, static_cells;
};

void SharedShadowDeleter::operator()(SharedShadow* s) const { delete s; }

namespace {

bool in_module_segments(uintptr_t a) {
  for (const auto& [lo, hi] : this_module().segments)
    if (a >= lo && a < hi) return true;
  return false;
}

void add_buffer(LaunchChecks& lc, uintptr_t p, int arg, const char* type, bool pointer_arg) {
  if (p == 0 || in_module_segments(p)) return;
  uintptr_t lo, hi;
  if (!find_tracked_allocation(p, &lo, &hi)) {
    if (pointer_arg && (lc.checks & kCheckMemory))
      throw EmulatorError("memcheck: kernel " + kernel_name(*lc.desc) + ": " + arg_name(arg, type) + " = " +
                          hex(p) + " points into memory that minilvlm._emu does not track (a tensor allocated "
                          "before minilvlm._emu was imported, or memory not from torch's CPU allocator), so "
                          "memcheck cannot bound it");
    return;
  }
  for (const Buffer& b : lc.buffers)
    if (b.lo == lo) return;
  Buffer b;
  b.lo = lo;
  b.hi = hi;
  b.arg = arg;
  b.type = type;
  lc.buffers.push_back(b);
}

void map_shadow(Buffer& b) {
  const size_t n = b.hi - b.lo;
  if (n == 0) return;
  b.map_bytes = n * 2 * sizeof(uint64_t);
  void* p = mmap(nullptr, b.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("minilvlm emu: cannot map the racecheck shadow of a buffer");
  b.state = static_cast<uint64_t*>(p);
  b.who = b.state + n;
}

}  // namespace

LaunchChecks* checks_begin_launch(const LaunchDesc& d, unsigned checks) {
  if (!checks) return nullptr;
  auto lc = std::make_unique<LaunchChecks>();
  lc->desc = &d;
  lc->checks = checks;
  lc->ctx_lo = reinterpret_cast<uintptr_t>(d.ctx);
  lc->ctx_size = d.ctx_size;
  for (int i = 0; i < d.nargs; ++i) {
    const ArgDesc& a = d.args[i];
    if (a.pointer) {
      uintptr_t p;
      std::memcpy(&p, a.addr, sizeof p);
      add_buffer(*lc, p, i, a.type, true);
      continue;
    }
    // A struct argument may carry pointers too: every aligned word that points into a tracked
    // allocation makes that allocation a buffer of the launch.
    const uintptr_t lo = reinterpret_cast<uintptr_t>(a.addr), hi = lo + a.size;
    for (uintptr_t w = (lo + 7) & ~uintptr_t{7}; w + 8 <= hi; w += 8) {
      uintptr_t v;
      std::memcpy(&v, reinterpret_cast<const void*>(w), sizeof v);
      if (v > 4096) add_buffer(*lc, v, i, a.type, false);
    }
  }
  std::sort(lc->buffers.begin(), lc->buffers.end(), [](const Buffer& a, const Buffer& b) { return a.lo < b.lo; });
  if (checks & kCheckRace)
    for (Buffer& b : lc->buffers) map_shadow(b);
  g_stack_size = stack_bytes();
  g_checked_launches.fetch_add(1);
  return lc.release();
}

void checks_end_launch(LaunchChecks* lc) {
  if (!lc) return;
  g_checked_launches.fetch_sub(1);
  delete lc;
}

namespace {

void reset_clocks(Runner& r) {
  for (int i = 0; i < r.n; ++i) {
    Fiber& f = *r.fibers[i];
    std::memset(f.clock, 0, sizeof f.clock);
    f.clock[i & 31] = 1;
  }
}

void next_epoch(Runner& r) {
  if (++r.epoch == 0) {  // after 2^32 epochs: forget everything rather than confuse old with new
    for (Cell& c : r.shadow->dynamic_cells) c = Cell{};
    for (Cell& c : r.shadow->static_cells) c = Cell{};
    r.epoch = 1;
  }
  reset_clocks(r);
}

}  // namespace

void checks_begin_block(Runner& r) {
  if (!r.checks) return;
  if (!r.shadow) {
    r.shadow.reset(new SharedShadow());
    r.shadow->tls_lo = module_tls_block();
    r.shadow->tls_size = r.shadow->tls_lo ? this_module().tls_size : 0;
    r.shadow->tls_var = reinterpret_cast<uintptr_t>(&tls);
  }
  if (r.checks & kCheckRace) {
    SharedShadow& sh = *r.shadow;
    if (sh.dynamic_cells.size() < r.smem_cap) sh.dynamic_cells.resize(r.smem_cap);
    if (sh.static_cells.size() < sh.tls_size) sh.static_cells.resize(sh.tls_size);
    next_epoch(r);
  }
}

void checks_barrier_released(Runner& r) {
  if (r.checks & kCheckRace) next_epoch(r);
}

void checks_warp_synchronised(Runner& r, int wbase, unsigned mask) {
  if (!(r.checks & kCheckRace)) return;
  uint32_t merged[32] = {};
  for (unsigned m = mask; m; m &= m - 1) {
    const uint32_t* c = r.fibers[wbase + __builtin_ctz(m)]->clock;
    for (int k = 0; k < 32; ++k) merged[k] = std::max(merged[k], c[k]);
  }
  for (unsigned m = mask; m; m &= m - 1) {
    const int l = __builtin_ctz(m);
    uint32_t* c = r.fibers[wbase + l]->clock;
    std::memcpy(c, merged, sizeof merged);
    c[l] = merged[l] + 1;
  }
}

namespace {

[[noreturn]] void report_shared_race(Runner& r, Fiber* f, const Access& prev, uint8_t kind, unsigned size,
                                     uintptr_t pc, const std::string& where) {
  const Fiber& other = *r.fibers[prev.tid];
  abort_fiber("race: " + r.where() + ": thread " + fmt_dim(f->tid) + " " + kind_verb(kind) + " " +
              std::to_string(size) + " bytes of shared memory at " + where + " (" + describe_code(pc) + ") that thread " +
              fmt_dim(other.tid) + " " + kind_past(prev.kind) + " (" + describe_code(this_module().base + prev.pc) +
              ") with no __syncthreads between them and no __syncwarp or warp primitive ordering them (" +
              kind_name(kind) + "-after-" + kind_name(prev.kind) + " hazard)");
}

void shared_access(Runner& r, Fiber* f, Cell* cells, size_t off, unsigned size, uint8_t kind, uintptr_t pc,
                   bool is_static) {
  const uint32_t epoch = r.epoch;
  const int u = f->id;
  const Access cur{epoch, f->clock[u & 31], static_cast<uint32_t>(pc - this_module().base), static_cast<uint16_t>(u),
                   kind, 0};
  // A hazard needs a plain write on one side: reads, and atomics, may meet each other (a plain read
  // of a value that others update atomically is the CAS-loop pattern of the CUDA guide).
  auto conflicts = [&](const Access& p) {
    if (p.epoch != epoch || p.tid == u || (p.kind != kWrite && kind != kWrite)) return false;
    return (p.tid >> 5) != (u >> 5) || f->clock[p.tid & 31] < p.stamp;  // same warp: ordered once synced
  };
  for (unsigned i = 0; i < size; ++i) {
    Cell& c = cells[off + i];
    const Access* prev = conflicts(c.w) ? &c.w : nullptr;
    if (!prev && kind != kRead) prev = conflicts(c.r1) ? &c.r1 : conflicts(c.r2) ? &c.r2 : nullptr;
    if (prev) {
      const std::string where = is_static ? describe_static_shared(off + i)
                                          : "dynamic shared memory offset " + std::to_string(off + i);
      report_shared_race(r, f, *prev, kind, size, pc, where);
    }
    if (kind != kRead) {
      c.w = cur;
      c.r1.epoch = c.r2.epoch = 0;
    } else if (c.r1.epoch != epoch || c.r1.tid == u) {
      if (c.r1.epoch != epoch) c.r2.epoch = 0;
      c.r1 = cur;
    } else {
      c.r2 = cur;
    }
  }
}

[[noreturn]] void report_global_race(Runner& r, Fiber* f, const Buffer& b, uintptr_t a, uint8_t kind,
                                     unsigned size, uintptr_t pc, bool with_writer, uint32_t other_block,
                                     uint64_t who) {
  const LaunchDesc& d = *r.desc;
  std::string other;
  if (other_block == kSeveralBlocks) {
    other = "that other blocks read";
  } else {
    other = "that block " + fmt_dim(block_of(d, static_cast<long long>(other_block & ~kAtomicBit) - 1)) + " " +
            (with_writer ? ((other_block & kAtomicBit) ? "atomically updated" : "wrote") : "read");
    if (who) {
      const unsigned t = static_cast<unsigned>(who & 0xffff), bx = d.block.x, by = d.block.y;
      other += " (thread " + fmt_dim(uint3{t % bx, (t / bx) % by, t / (bx * by)}) + ", " +
               describe_code(this_module().base + (who >> 32)) + ")";
    }
  }
  abort_fiber("race: " + r.where() + " thread " + fmt_dim(f->tid) + " " + kind_verb(kind) + " " + std::to_string(size) +
              " bytes of global memory at " + arg_name(b.arg, b.type) + " + byte " + std::to_string(a - b.lo) +
              " (" + describe_code(pc) + ") " + other + " in the same launch (" + kind_name(kind) + "-after-" +
              (with_writer ? ((other_block & kAtomicBit) ? "atomic" : "write") : "read") + " hazard between blocks: the blocks of a launch run in no fixed "
              "order; do two blocks cover the same elements, as a grid-stride loop with the wrong stride does?)");
}

void global_access(Runner& r, Fiber* f, Buffer& b, uintptr_t a, unsigned size, uint8_t kind, uintptr_t pc) {
  const uint32_t me = static_cast<uint32_t>(r.block_lin + 1);
  const uint64_t info = (static_cast<uint64_t>(pc - this_module().base) << 32) | static_cast<uint32_t>(f->id);
  const size_t first = a - b.lo;
  const size_t count = std::min<size_t>(size, b.hi - a);
  for (size_t i = first; i < first + count; ++i) {
    uint64_t old = __atomic_load_n(b.state + i, __ATOMIC_RELAXED);
    for (;;) {
      const uint32_t w = static_cast<uint32_t>(old), rd = static_cast<uint32_t>(old >> 32);
      const uint32_t wblock = w & ~kAtomicBit;
      const bool plain_write = wblock && !(w & kAtomicBit);
      // As in shared memory, a hazard needs a plain write on one side.
      if (wblock && wblock != me && (plain_write || kind == kWrite))
        report_global_race(r, f, b, a, kind, size, pc, true, w, __atomic_load_n(b.who + i, __ATOMIC_RELAXED));
      if (kind == kWrite && rd && rd != me) report_global_race(r, f, b, a, kind, size, pc, false, rd, 0);
      uint32_t nw = w, nr = rd;
      if (kind == kRead) nr = (rd == 0 || rd == me) ? me : kSeveralBlocks;
      else if (kind == kWrite) nw = me;
      else if (w == 0 || (w & kAtomicBit)) nw = me | kAtomicBit;
      const uint64_t next = (static_cast<uint64_t>(nr) << 32) | nw;
      if (next == old ||
          __atomic_compare_exchange_n(b.state + i, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        break;
    }
    if (kind != kRead) __atomic_store_n(b.who + i, info, __ATOMIC_RELAXED);
  }
}

[[noreturn]] void report_out_of_bounds(Runner& r, Fiber* f, const LaunchChecks& lc, uintptr_t a, unsigned size,
                                       uint8_t kind, uintptr_t pc) {
  std::string nearest = "the launch has no buffers";
  uintptr_t best = ~uintptr_t{0};
  for (const Buffer& b : lc.buffers) {
    const uintptr_t dist = a >= b.hi ? a - b.hi : a + size <= b.lo ? b.lo - a : 0;
    if (dist > best) continue;
    best = dist;
    nearest = "the nearest is " + arg_name(b.arg, b.type) + ", a buffer of " + std::to_string(b.hi - b.lo) +
              " bytes at " + hex(b.lo) + ", and the access " +
              (a >= b.hi ? "starts " + std::to_string(a - b.hi) + " bytes past its end"
               : a < b.lo ? "starts " + std::to_string(b.lo - a) + " bytes before its start"
                          : "ends " + std::to_string(a + size - b.hi) + " bytes past its end");
  }
  abort_fiber("memcheck: " + r.where() + " thread " + fmt_dim(f->tid) + ": " + std::to_string(size) + "-byte " +
              kind_name(kind) + " at " + hex(a) + " (" + describe_code(pc) + ") is outside every buffer of the launch; " +
              nearest);
}

}  // namespace

void check_access(Runner& r, Fiber* f, uintptr_t a, unsigned size, uint8_t kind, uintptr_t pc) {
  const RuntimeScope scope(f);
  if (a - reinterpret_cast<uintptr_t>(f->stack_lo) < g_stack_size) return;  // the thread's locals
  const LaunchChecks& lc = *r.launch_checks;
  if (a - lc.ctx_lo < lc.ctx_size) return;  // the launch's copy of the kernel arguments
  const uintptr_t smem = reinterpret_cast<uintptr_t>(r.smem);
  if (a - smem < r.smem_cap) {
    const size_t off = a - smem;
    if (off + size > r.desc->smem) {
      if (r.checks & kCheckMemory)
        abort_fiber("memcheck: " + r.where() + " thread " + fmt_dim(f->tid) + ": " + std::to_string(size) + "-byte " +
                    kind_name(kind) + " of dynamic shared memory at offset " + std::to_string(off) + " (" +
                    describe_code(pc) + ") is past the " + std::to_string(r.desc->smem) + " bytes of the launch");
      return;
    }
    if (r.checks & kCheckRace) shared_access(r, f, r.shadow->dynamic_cells.data(), off, size, kind, pc, false);
    return;
  }
  SharedShadow& sh = *r.shadow;
  if (a - sh.tls_lo < sh.tls_size) {
    if (a - sh.tls_var < sizeof(Tls)) return;  // threadIdx, blockIdx, ...
    if (r.checks & kCheckRace) shared_access(r, f, sh.static_cells.data(), a - sh.tls_lo, size, kind, pc, true);
    return;
  }
  for (const Buffer& b : lc.buffers) {
    if (a < b.lo || a >= b.hi) continue;
    if (a + size > b.hi && (r.checks & kCheckMemory)) report_out_of_bounds(r, f, lc, a, size, kind, pc);
    if (r.checks & kCheckRace) global_access(r, f, const_cast<Buffer&>(b), a, size, kind, pc);
    return;
  }
  if (in_module_segments(a)) return;  // __constant__ / __device__ variables, string literals
  if (r.checks & kCheckMemory) report_out_of_bounds(r, f, lc, a, size, kind, pc);
}

}  // namespace detail

}  // namespace minilvlm_emu
