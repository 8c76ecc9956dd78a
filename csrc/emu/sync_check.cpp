// sync_check.cpp: synccheck, the emulator's errors for synchronisation that CUDA leaves undefined
// or that hangs a GPU: a __syncthreads that not every thread of the block reaches, a warp primitive
// whose mask names a lane that has exited or never arrives, and a shuffle that reads a lane outside
// its mask. Always on: each is an EmulatorError naming the threads, never a hang.
#include <string>
#include <vector>

#include "emu/report.h"
#include "emu/runtime.h"

namespace minilvlm_emu {
namespace detail {

namespace {

std::string waits_at(const Fiber& f) {
  if (f.state == kAtBarrier) return std::string(barrier_name(f.op)) + " at " + site(f.file, f.line);
  if (f.state == kAtWarp)
    return std::string(warp_op_name(f.op)) + " at " + site(f.file, f.line) + " with mask " + hex32(f.mask);
  return "";
}

// "exited", "wait at __syncthreads at f.cuh:12", ... for the threads `ids`, grouped by where they are.
std::string where_they_are(const Runner& r, const std::vector<int>& ids) {
  std::vector<std::string> keys;
  std::vector<std::vector<int>> groups;
  for (int i : ids) {
    const Fiber& f = *r.fibers[i];
    std::string key = f.state == kExited ? "exited" : f.state == kTrapped ? "trapped" : "wait at " + waits_at(f);
    size_t k = 0;
    while (k < keys.size() && keys[k] != key) ++k;
    if (k == keys.size()) {
      keys.push_back(key);
      groups.emplace_back();
    }
    groups[k].push_back(i);
  }
  if (keys.size() == 1) return keys[0];
  std::string s;
  for (size_t k = 0; k < keys.size(); ++k) s += (k ? "; " : "") + ranges(groups[k]) + " " + keys[k];
  return s;
}

bool same_wait(const Fiber& a, const Fiber& b) {
  return a.state == b.state && a.op == b.op && (a.state != kAtWarp || a.mask == b.mask) &&
         same_site(a.file, a.line, b.file, b.line);
}

}  // namespace

std::string describe_stuck_block(const Runner& r) {
  int first = -1;
  for (int i = 0; i < r.n && first < 0; ++i)
    if (r.fibers[i]->state == kAtBarrier || r.fibers[i]->state == kAtWarp) first = i;
  if (first < 0) return "minilvlm emu: " + r.where() + ": no thread can make progress";
  const Fiber& w = *r.fibers[first];
  std::vector<int> reached, missing;
  if (w.state == kAtBarrier) {
    for (int i = 0; i < r.n; ++i) (same_wait(*r.fibers[i], w) ? reached : missing).push_back(i);
    return "synccheck: " + r.where() + ": " + waits_at(w) + " was reached by threads " + ranges(reached) +
           ", but threads " + ranges(missing) + " did not arrive (" + where_they_are(r, missing) +
           "). Every thread of the block must reach the same __syncthreads (a thread returned early, or a "
           "barrier inside a divergent branch?)";
  }
  const int wbase = first & ~31;
  for (unsigned m = w.mask; m; m &= m - 1) {
    const int i = wbase + __builtin_ctz(m);
    (same_wait(*r.fibers[i], w) ? reached : missing).push_back(i - wbase);
  }
  std::vector<int> missing_ids;
  for (int l : missing) missing_ids.push_back(wbase + l);
  return "synccheck: " + r.where() + " warp " + std::to_string(wbase / 32) + ": " + waits_at(w) +
         " was reached by lanes " + ranges(reached) + ", but lanes " + ranges(missing) + " did not arrive (" +
         where_they_are(r, missing_ids) + "). Every lane named in a warp primitive's mask must reach a primitive "
         "of the same kind with the same mask";
}

void check_warp_mask_active(Runner& r, Fiber* f, int op, unsigned mask, const char* file, int line) {
  const int wbase = f->id & ~31;
  const unsigned gone_mask = mask & r.warp_gone[wbase / 32];
  if (!gone_mask) return;
  std::vector<int> gone;
  for (unsigned m = gone_mask; m; m &= m - 1) gone.push_back(__builtin_ctz(m));
  abort_fiber("synccheck: " + r.where() + " warp " + std::to_string(wbase / 32) + ": " + warp_op_name(op) + " at " +
              site(file, line) + " by thread " + fmt_dim(f->tid) + " with mask " + hex32(mask) + " names lanes " +
              ranges(gone) + ", which have exited. A warp primitive's mask may name only lanes that execute it "
              "(use __activemask() or __ballot_sync to build the mask)");
}

std::string describe_shuffle_outside_mask(const Runner& r, int wbase, int lane, int src, unsigned mask) {
  const Fiber& g = *r.fibers[wbase + lane];
  return "synccheck: " + r.where() + " warp " + std::to_string(wbase / 32) + ": " + warp_op_name(g.op) + " at " +
         site(g.file, g.line) + " with mask " + hex32(mask) + ": lane " + std::to_string(lane) + " reads lane " +
         std::to_string(src) + ", which is not in the mask, so the value it gets is undefined (a wrong offset, "
         "or a missing width argument?)";
}

}  // namespace detail
}  // namespace minilvlm_emu
