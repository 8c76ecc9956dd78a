// control.cpp: the emulator's settings as torch ops (torch.ops.minilvlm_emu.*), for tests and for
// anyone running the emulated kernels: scheduling seed and OS threads, the access checks, the GPU
// profile whose launch configuration the grids follow, and what the last launches did.
#include <torch/library.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "emu/simt.h"

namespace minilvlm {
namespace emu_control {
namespace {

void set_seed(int64_t seed) { minilvlm_emu::set_seed(static_cast<uint64_t>(seed)); }
int64_t get_seed() { return static_cast<int64_t>(minilvlm_emu::get_seed()); }
void set_num_threads(int64_t n) { minilvlm_emu::set_num_threads(static_cast<int>(n)); }
int64_t get_num_threads() { return minilvlm_emu::get_num_threads(); }

// std::invalid_argument would reach Python as a RuntimeError without its message's type; a
// ValueError says "bad argument".
template <typename Fn>
void value_checked(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

void set_checks(std::string checks) { value_checked([&] { minilvlm_emu::set_checks(checks); }); }
std::string get_checks() { return minilvlm_emu::get_checks(); }
bool checks_available() { return minilvlm_emu::checks_available(); }

void set_gpu(std::string name) { value_checked([&] { minilvlm_emu::set_gpu(name); }); }
std::string get_gpu() {
  const minilvlm_emu::GpuProfile* gpu = minilvlm_emu::current_gpu();
  return gpu ? gpu->name : "";
}

// (SMs, threads/SM, blocks/SM, shared memory/SM, shared memory/block, registers/SM) of a profile.
std::vector<int64_t> gpu_profile(std::string name) {
  const minilvlm_emu::GpuProfile* before = minilvlm_emu::current_gpu();
  value_checked([&] { minilvlm_emu::set_gpu(name); });
  const minilvlm_emu::GpuProfile g = *minilvlm_emu::current_gpu();
  minilvlm_emu::set_gpu(before ? before->name : "");
  return {g.sm_count, g.max_threads_per_sm, g.max_blocks_per_sm, g.smem_per_sm, g.smem_per_block, g.regs_per_sm};
}

int64_t resident_blocks(std::string name, int64_t threads, int64_t smem) {
  const minilvlm_emu::GpuProfile* before = minilvlm_emu::current_gpu();
  value_checked([&] { minilvlm_emu::set_gpu(name); });
  const int r = minilvlm_emu::resident_blocks(*minilvlm_emu::current_gpu(), static_cast<int>(threads),
                                              static_cast<size_t>(smem));
  minilvlm_emu::set_gpu(before ? before->name : "");
  return r;
}

// "<kernel> grid=(x,y,z) block=(x,y,z) smem=<bytes>" for the last launches, oldest first.
std::vector<std::string> recent_launches() {
  std::vector<std::string> out;
  for (const minilvlm_emu::LaunchRecord& r : minilvlm_emu::recent_launches()) {
    auto dim = [](dim3 d) {
      return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
    };
    out.push_back(r.kernel + " grid=" + dim(r.grid) + " block=" + dim(r.block) + " smem=" + std::to_string(r.smem));
  }
  return out;
}
void clear_recent_launches() { minilvlm_emu::clear_recent_launches(); }

std::tuple<int64_t, double> launch_stats() {
  const minilvlm_emu::LaunchStats s = minilvlm_emu::launch_stats();
  return {s.launches, s.seconds};
}
void reset_launch_stats() { minilvlm_emu::reset_launch_stats(); }

}  // namespace
}  // namespace emu_control
}  // namespace minilvlm

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  using namespace minilvlm::emu_control;
  m.def("set_seed(int seed) -> ()", &set_seed);
  m.def("get_seed() -> int", &get_seed);
  m.def("set_num_threads(int n) -> ()", &set_num_threads);
  m.def("get_num_threads() -> int", &get_num_threads);
  m.def("set_checks(str checks) -> ()", &set_checks);
  m.def("get_checks() -> str", &get_checks);
  m.def("checks_available() -> bool", &checks_available);
  m.def("set_gpu(str name) -> ()", &set_gpu);
  m.def("get_gpu() -> str", &get_gpu);
  m.def("gpu_profile(str name) -> int[]", &gpu_profile);
  m.def("resident_blocks(str name, int threads, int smem) -> int", &resident_blocks);
  m.def("recent_launches() -> str[]", &recent_launches);
  m.def("clear_recent_launches() -> ()", &clear_recent_launches);
  m.def("launch_stats() -> (int, float)", &launch_stats);
  m.def("reset_launch_stats() -> ()", &reset_launch_stats);
}
