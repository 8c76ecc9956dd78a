// simt.cpp: the runtime of the SIMT emulator: fibers, the block scheduler, barriers, warp
// exchanges, launch validation. Its state is in runtime.h; the sync errors are worded in
// sync_check.cpp and the access checks live in checks.cpp. See simt.h and docs/emulator.md.
#include "emu/simt.h"

#include "emu/context.h"
#include "emu/report.h"
#include "emu/runtime.h"

#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace minilvlm_emu {

namespace {
std::atomic<uint64_t> g_seed{0};
std::atomic<int> g_num_threads{-1};  // -1: not read from the environment yet
std::mutex g_recent_mu;
struct RecentLaunch {
  detail::LaunchDesc desc;  // name, fn, grid, block, smem (the rest dangles after the launch)
};
std::vector<RecentLaunch> g_recent;  // a ring of kRecentLaunches
size_t g_recent_next = 0;
constexpr size_t kRecentLaunches = 64;
std::atomic<long long> g_launches{0}, g_launch_ns{0};
}  // namespace

void set_seed(uint64_t seed) { g_seed.store(seed, std::memory_order_relaxed); }
uint64_t get_seed() { return g_seed.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_num_threads.store(n < 0 ? 0 : n, std::memory_order_relaxed); }
int get_num_threads() {
  int n = g_num_threads.load(std::memory_order_relaxed);
  if (n < 0) {
    n = 0;
    if (const char* s = std::getenv("MINILVLM_EMU_THREADS")) n = std::max(0, std::atoi(s));
    g_num_threads.store(n, std::memory_order_relaxed);
  }
  return n;
}

std::vector<LaunchRecord> recent_launches() {
  std::lock_guard<std::mutex> lock(g_recent_mu);
  std::vector<LaunchRecord> out;
  for (size_t i = 0; i < g_recent.size(); ++i) {
    const detail::LaunchDesc& d = g_recent[(g_recent_next + i) % g_recent.size()].desc;
    out.push_back(LaunchRecord{detail::kernel_name(d), d.grid, d.block, d.smem});
  }
  return out;
}

void clear_recent_launches() {
  std::lock_guard<std::mutex> lock(g_recent_mu);
  g_recent.clear();
  g_recent_next = 0;
}

LaunchStats launch_stats() { return LaunchStats{g_launches.load(), g_launch_ns.load() * 1e-9}; }
void reset_launch_stats() {
  g_launches.store(0);
  g_launch_ns.store(0);
}

namespace detail {

size_t stack_bytes() {
  static const size_t bytes = [] {
    size_t kb = 128;
    if (const char* s = std::getenv("MINILVLM_EMU_STACK_KB")) {
      long v = std::atol(s);
      if (v >= 16) kb = static_cast<size_t>(v);
    }
    return kb * 1024;
  }();
  return bytes;
}

void fiber_main(Fiber* f);

namespace {

void fiber_entry(void* f) { fiber_main(static_cast<Fiber*>(f)); }

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Warp operations that can complete together: shuffles mix freely (each lane names its own
// source), votes mix freely; everything else must match exactly.
int op_group(int op, int width) {
  if (op <= kShflXor) return 0;
  if (op <= kAll) return 1;
  return 16 + op * 2 + (width & 1);
}

// The source lane of a shuffle for lane l (CUDA's rules for width sections); -1 when the lane
// keeps its own value (up/down/xor past its section).
int shuffle_source(const Fiber& g, int l) {
  const int w = g.width;
  const int lo = l & ~(w - 1), hi = lo + w - 1;
  int j = l;
  switch (g.op) {
    case kShflIdx: return lo + (g.arg & (w - 1));
    case kShflUp: j = l - g.arg; return j >= lo ? j : -1;
    case kShflDown: j = l + g.arg; return j <= hi ? j : -1;
    default: j = l ^ g.arg; return (j >= 0 && j <= hi) ? j : -1;
  }
}

}  // namespace

Runner::Runner() = default;

Runner::~Runner() {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (char* s : stacks) munmap(s, stack_bytes() + page);
  std::free(smem);
}

void Runner::ensure(int count, size_t smem_bytes) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (static_cast<int>(fibers.size()) < count) {
    void* p = mmap(nullptr, stack_bytes() + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("minilvlm emu: cannot allocate fiber stacks (mmap failed)");
    mprotect(p, page, PROT_NONE);  // guard page below the stack
    stacks.push_back(static_cast<char*>(p));
    fibers.emplace_back(new Fiber());
    fibers.back()->stack_lo = static_cast<char*>(p) + page;
  }
  if (static_cast<int>(order.size()) < count) order.resize(count);
  size_t need = std::max<size_t>(smem_bytes, 16);
  if (need > smem_cap) {
    std::free(smem);
    smem_cap = (need + 63) & ~static_cast<size_t>(63);
    smem = static_cast<unsigned char*>(std::aligned_alloc(64, smem_cap));
    if (!smem) throw std::bad_alloc();
  }
}

std::string Runner::where() const { return "kernel " + kernel_name(*desc) + " block " + fmt_dim(bidx); }

void Runner::fail(Fiber* f, const std::string& what) {
  fail_check("minilvlm emu: " + where() + " thread " + fmt_dim(f->tid) + ": " + what);
}

void Runner::fail_check(const std::string& message) {
  if (failed) return;
  failed = true;
  error = message;
}

void Runner::release_barrier() {
  int r = 0;
  switch (bar_kind) {
    case 1: r = bar_count; break;
    case 2: r = bar_count == n; break;
    case 3: r = bar_count != 0; break;
    default: break;
  }
  bar_result = r;
  arrived = 0;
  for (int i = 0; i < n; ++i) fibers[i]->state = kRunnable;
  checks_barrier_released(*this);
}

void Runner::complete_warp(int wbase, unsigned mask) {
  Fiber& first = *fibers[wbase + __builtin_ctz(mask)];
  const int op = first.op;
  if (op <= kShflXor) {
    for (unsigned m = mask; m; m &= m - 1) {
      int l = __builtin_ctz(m);
      Fiber& g = *fibers[wbase + l];
      const int j = shuffle_source(g, l);
      if (j < 0 || j > 31) {
        std::memcpy(g.out, g.val, g.size);
      } else if (!((mask >> j) & 1u)) {  // undefined in CUDA: a synccheck error
        fail_check(describe_shuffle_outside_mask(*this, wbase, l, j, mask));
        return;
      } else {
        std::memcpy(g.out, fibers[wbase + j]->val, g.size);
      }
    }
  } else {
    unsigned ballot = 0;
    long long acc = 0;
    bool have = false;
    for (unsigned m = mask; m; m &= m - 1) {
      int l = __builtin_ctz(m);
      const Fiber& g = *fibers[wbase + l];
      if (g.pred) ballot |= 1u << l;
      long long v = (g.width & 1) ? static_cast<long long>(static_cast<int>(g.pred))
                                  : static_cast<long long>(static_cast<unsigned>(g.pred));
      if (op == kReduceAdd) {
        acc += v;
      } else if (!have) {
        acc = v;
      } else if (op == kReduceMin) {
        acc = std::min(acc, v);
      } else if (op == kReduceMax) {
        acc = std::max(acc, v);
      }
      have = true;
    }
    for (unsigned m = mask; m; m &= m - 1) {
      Fiber& g = *fibers[wbase + __builtin_ctz(m)];
      switch (g.op) {
        case kBallot: g.result = ballot; break;
        case kAny: g.result = ballot != 0; break;
        case kAll: g.result = ballot == mask; break;
        case kReduceAdd:
        case kReduceMin:
        case kReduceMax: g.result = static_cast<unsigned>(acc); break;
        default: g.result = 0; break;
      }
    }
  }
  for (unsigned m = mask; m; m &= m - 1) fibers[wbase + __builtin_ctz(m)]->state = kRunnable;
  warp_waiting[wbase / 32] -= __builtin_popcount(mask);
  checks_warp_synchronised(*this, wbase, mask);
}

// Runs one block; returns false (with `error` set) on failure. Never throws.
bool Runner::run_block(const LaunchDesc& d, long long lin) noexcept {
  try {
    desc = &d;
    const dim3 b = d.block, g = d.grid;
    block_lin = lin;
    bidx = uint3{static_cast<unsigned>(lin % g.x), static_cast<unsigned>((lin / g.x) % g.y),
                 static_cast<unsigned>(lin / (static_cast<long long>(g.x) * g.y))};
    n = static_cast<int>(b.x * b.y * b.z);
    ensure(n, d.smem);
    const size_t ssize = stack_bytes();
    for (int i = 0; i < n; ++i) {
      Fiber& f = *fibers[i];
      f.id = i;
      f.tid = uint3{static_cast<unsigned>(i % b.x), static_cast<unsigned>((i / b.x) % b.y),
                    static_cast<unsigned>(i / (b.x * b.y))};
      f.state = kRunnable;
      f.in_runtime = false;
      ctx_init(&f.ctx, f.stack_lo, ssize, &fiber_entry, &f);
    }
    exited = 0;
    warp_gone.assign((n + 31) / 32, 0u);
    warp_waiting.assign((n + 31) / 32, 0);
    arrived = 0;
    bar_mismatch = false;
    failed = false;
    error.clear();
    std::memset(smem, 0xff, std::max<size_t>(d.smem, 16));
    checks_begin_block(*this);

    Tls& t = tls;
    t.block_idx = bidx;
    t.block_dim = uint3{b.x, b.y, b.z};
    t.grid_dim = uint3{g.x, g.y, g.z};
    t.dyn_smem = smem;
    t.runner = this;

    const uint64_t seed = get_seed();
    uint64_t rng = seed ^ (static_cast<uint64_t>(lin) * 0xd1b54a32d192ed03ull);
    for (;;) {
      int cnt = 0;
      for (int i = 0; i < n; ++i)
        if (fibers[i]->state == kRunnable) order[cnt++] = i;
      if (cnt == 0) break;
      if (seed != 0) {
        for (int i = cnt - 1; i > 0; --i) {
          int j = static_cast<int>(splitmix(rng) % static_cast<uint64_t>(i + 1));
          std::swap(order[i], order[j]);
        }
      }
      for (int k = 0; k < cnt && !failed; ++k) {
        Fiber* f = fibers[order[k]].get();
        if (f->state != kRunnable) continue;
        t.fiber = f;
        t.thread_idx = f->tid;
        ctx_switch(&sched, &f->ctx);
        t.fiber = nullptr;
      }
      if (failed) break;
    }
    t.fiber = nullptr;
    t.runner = nullptr;
    if (!failed && exited != n) fail_check(describe_stuck_block(*this));
#if defined(__SANITIZE_ADDRESS__)
    // Frames of fibers that never returned (trapped, or stuck) stay poisoned in ASan's shadow.
    if (failed)
      for (int i = 0; i < n; ++i) ASAN_UNPOISON_MEMORY_REGION(fibers[i]->stack_lo, ssize);
#endif
    return !failed;
  } catch (const std::exception& e) {
    tls.fiber = nullptr;
    tls.runner = nullptr;
    failed = true;
    error = std::string("minilvlm emu: launch of kernel '") + (d.name ? d.name : "?") + "' failed: " + e.what();
    return false;
  }
}

namespace {
Runner& this_runner() {
  static thread_local std::unique_ptr<Runner> r;
  if (!r) r.reset(new Runner());
  return *r;
}

inline Fiber* current(const char* what) {
  Fiber* f = tls.fiber;
  if (!f) throw std::runtime_error(std::string("minilvlm emu: ") + what + " called outside of a kernel");
  return f;
}

inline void yield(Fiber* f) { ctx_switch(&f->ctx, &tls.runner->sched); }
}  // namespace

void fiber_main(Fiber* f) {
  Runner* r = tls.runner;
  ctx_started(&r->sched);
  {
    bool threw = false;
    std::string what;
    try {
      r->desc->body(r->desc->ctx);
      f->in_runtime = true;
    } catch (const std::exception& e) {
      threw = true;
      what = std::string("uncaught exception: ") + e.what();
    } catch (...) {
      threw = true;
      what = "uncaught exception of unknown type";
    }
    f->in_runtime = true;
    r->warp_gone[f->id / 32] |= 1u << (f->id & 31);
    if (threw) {
      r->fail(f, what);
      f->state = kTrapped;
    } else {
      f->state = kExited;
      ++r->exited;
    }
  }
  ctx_switch(&f->ctx, &r->sched);
  __builtin_trap();  // an exited fiber is never resumed
}

[[noreturn]] void abort_fiber(const std::string& message) {
  Fiber* f = tls.fiber;
  Runner* r = tls.runner;
  f->in_runtime = true;
  r->fail_check(message);
  r->warp_gone[f->id / 32] |= 1u << (f->id & 31);
  f->state = kTrapped;
  ctx_switch(&f->ctx, &r->sched);
  __builtin_trap();  // a trapped fiber is never resumed
}

int block_barrier(int kind, int pred, const char* file, int line) {
  Fiber* f = current(barrier_name(kind));
  const RuntimeScope scope(f);
  Runner& r = *tls.runner;
  f->state = kAtBarrier;
  f->op = kind;
  f->file = file;
  f->line = line;
  if (r.arrived == 0) {
    r.bar_kind = kind;
    r.bar_file = file;
    r.bar_line = line;
    r.bar_mismatch = false;
    r.bar_count = 0;
  } else if (kind != r.bar_kind || !same_site(file, line, r.bar_file, r.bar_line)) {
    r.bar_mismatch = true;
  }
  ++r.arrived;
  r.bar_count += pred;
  if (r.arrived == r.n && !r.bar_mismatch) r.release_barrier();
  yield(f);
  return r.bar_result;
}

unsigned warp_op(WarpOp op, unsigned mask, const void* in, unsigned size, int arg, int width, long long pred,
                 void* out, const char* file, int line) {
  Fiber* f = current(warp_op_name(op));
  const RuntimeScope scope(f);
  Runner& r = *tls.runner;
  const int lane = f->id & 31;
  const int wbase = f->id & ~31;
  const int nl = std::min(32, r.n - wbase);
  const unsigned exist = nl == 32 ? 0xffffffffu : ((1u << nl) - 1u);
  if (!((mask >> lane) & 1u)) {
    trap((std::string(warp_op_name(op)) + " with mask " + hex32(mask) + " that does not include the calling lane " +
          std::to_string(lane)).c_str(), file, line);
  }
  if (mask & ~exist) {
    trap((std::string(warp_op_name(op)) + " with mask " + hex32(mask) + " naming lanes that do not exist (warp " +
          std::to_string(wbase / 32) + " has " + std::to_string(nl) + " threads)").c_str(), file, line);
  }
  if (op <= kShflXor && (width < 1 || width > 32 || (width & (width - 1)) != 0)) {
    trap((std::string(warp_op_name(op)) + " with width " + std::to_string(width) +
          " (must be a power of two in [1, 32])").c_str(), file, line);
  }
  check_warp_mask_active(r, f, op, mask, file, line);
  f->state = kAtWarp;
  f->op = op;
  f->mask = mask;
  f->size = size;
  f->arg = arg;
  f->width = width;
  f->pred = pred;
  f->file = file;
  f->line = line;
  if (size) std::memcpy(f->val, in, size);
  // Complete when every lane of the mask waits at a compatible primitive; scanning the lanes only
  // once enough of them wait keeps a warp primitive O(32) instead of O(32^2).
  const int grp = op_group(op, width);
  bool all = ++r.warp_waiting[wbase / 32] >= __builtin_popcount(mask);
  for (unsigned m = mask; all && m; m &= m - 1) {
    const Fiber& g = *r.fibers[wbase + __builtin_ctz(m)];
    all = g.state == kAtWarp && g.mask == mask && g.size == size && op_group(g.op, g.width) == grp;
  }
  if (all) {
    r.complete_warp(wbase, mask);
    if (r.failed) abort_fiber(r.error);
  }
  yield(f);
  if (out && size) std::memcpy(out, f->out, size);
  return f->result;
}

unsigned active_mask() {
  Fiber* f = current("__activemask");
  const RuntimeScope scope(f);
  Runner& r = *tls.runner;
  const int wbase = f->id & ~31;
  const int nl = std::min(32, r.n - wbase);
  unsigned m = 0;
  for (int l = 0; l < nl; ++l)
    if (r.fibers[wbase + l]->state != kExited) m |= 1u << l;
  return m;
}

void trap(const char* what, const char* file, int line) {
  Fiber* f = tls.fiber;
  const RuntimeScope scope(f);
  std::string msg = what;
  if (file) msg += " at " + site(file, line);
  if (!f) throw std::runtime_error("minilvlm emu: " + msg + " (outside of a kernel)");
  Runner* r = tls.runner;
  abort_fiber("minilvlm emu: " + r->where() + " thread " + fmt_dim(f->tid) + ": " + msg);
}

void assert_fail(const char* expr, const char* file, int line, const char* func) {
  std::string what = std::string("assertion '") + expr + "' failed in " + (func ? func : "?");
  trap(what.c_str(), file, line);
}

void launch_check(bool ok, const char* name, const char* what) {
  if (!ok)
    throw EmulatorError(std::string("minilvlm emu: invalid launch of kernel '") + (name ? name : "?") + "': " +
                        what);
}

namespace {

void validate_launch(const LaunchDesc& d) {
  const dim3 g = d.grid, b = d.block;
  auto bad = [&](const std::string& what) { launch_check(false, d.name, what.c_str()); };
  if (g.x == 0 || g.y == 0 || g.z == 0) bad("grid " + fmt_dim(g) + " has a zero dimension");
  if (g.x > 2147483647u || g.y > 65535u || g.z > 65535u) bad("grid " + fmt_dim(g) + " exceeds (2^31-1, 65535, 65535)");
  if (b.x == 0 || b.y == 0 || b.z == 0) bad("block " + fmt_dim(b) + " has a zero dimension");
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  if (threads > 1024) bad("block " + fmt_dim(b) + " has " + std::to_string(threads) + " threads (max 1024)");
  if (b.z > 64) bad("block " + fmt_dim(b) + " exceeds the limit of 64 in z");
  if (d.smem > 232448)
    bad("dynamic shared memory of " + std::to_string(d.smem) + " bytes exceeds the 227 KiB (232448 bytes) limit");
  if (const GpuProfile* gpu = current_gpu()) {
    if (d.smem > static_cast<size_t>(gpu->smem_per_block))
      bad("dynamic shared memory of " + std::to_string(d.smem) + " bytes exceeds the " +
          std::to_string(gpu->smem_per_block) + " bytes a block may use on " + gpu->name +
          " without cudaFuncSetAttribute");
  }
  std::lock_guard<std::mutex> lock(g_recent_mu);
  if (g_recent.size() < kRecentLaunches) {
    g_recent.push_back(RecentLaunch{d});
  } else {
    g_recent[g_recent_next] = RecentLaunch{d};
    g_recent_next = (g_recent_next + 1) % kRecentLaunches;
  }
}

// Ends the launch's checks and counts its time however run_grid leaves.
struct LaunchChecksScope {
  LaunchChecks* lc;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  ~LaunchChecksScope() {
    checks_end_launch(lc);
    g_launches.fetch_add(1);
    g_launch_ns.fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count());
  }
};

}  // namespace

void run_grid(const LaunchDesc& d) {
  if (tls.fiber) launch_check(false, d.name, "launching a kernel from device code is not supported");
  validate_launch(d);
  const dim3 g = d.grid;
  const long long nblocks = static_cast<long long>(g.x) * g.y * g.z;
  int nt = get_num_threads();
  if (nt == 0) nt = omp_get_max_threads();
  if (nt > nblocks) nt = static_cast<int>(nblocks);
  const unsigned checks = enabled_checks();
  LaunchChecksScope scope{checks_begin_launch(d, checks)};

  // After a failure, blocks with a higher index are skipped; lower ones still run, so the
  // error reported is always the one of the lowest failing block.
  std::atomic<long long> err_block{LLONG_MAX};
  std::mutex mu;
  std::string err;
  auto run_one = [&](long long blk) {
    if (blk > err_block.load(std::memory_order_relaxed)) return;
    Runner& r = this_runner();
    r.checks = checks;
    r.launch_checks = scope.lc;
    const bool ok = r.run_block(d, blk);
    r.checks = 0;
    r.launch_checks = nullptr;
    if (!ok) {
      std::lock_guard<std::mutex> lock(mu);
      if (blk < err_block.load(std::memory_order_relaxed)) {
        err_block.store(blk, std::memory_order_relaxed);
        err = r.error;
      }
    }
  };
  if (nt <= 1) {
    for (long long blk = 0; blk < nblocks && err_block.load(std::memory_order_relaxed) == LLONG_MAX; ++blk)
      run_one(blk);
  } else {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (long long blk = 0; blk < nblocks; ++blk) run_one(blk);
  }
  if (err_block.load() != LLONG_MAX) throw EmulatorError(err);
}

}  // namespace detail
}  // namespace minilvlm_emu
