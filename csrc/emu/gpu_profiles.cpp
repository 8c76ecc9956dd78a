// gpu_profiles.cpp: the GPUs whose launch configurations the emulator can reproduce (set_gpu), from
// their published limits (CUDA C++ Programming Guide, "Compute Capabilities"; A100 and H100 SXM
// datasheets). EmuTarget multiplies the SM count by an op's blocks per SM, exactly as CudaTarget
// does with the device's SM count, so a test under a profile runs the grid that GPU would get.
#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "emu/simt.h"

namespace minilvlm_emu {

namespace {

// name, SMs, threads/SM, blocks/SM, shared memory/SM, default shared memory/block, registers/SM
constexpr GpuProfile kProfiles[] = {
    {"A100", 108, 2048, 32, 167936, 49152, 65536},  // sm_80, A100 SXM4: 164 KiB of shared memory per SM
    {"H100", 132, 2048, 32, 233472, 49152, 65536},  // sm_90, H100 SXM5: 228 KiB of shared memory per SM
};

std::atomic<const GpuProfile*> g_gpu{nullptr};

}  // namespace

void set_gpu(const std::string& name) {
  if (name.empty() || name == "none") {
    g_gpu.store(nullptr);
    return;
  }
  for (const GpuProfile& p : kProfiles) {
    if (name == p.name) {
      g_gpu.store(&p);
      return;
    }
  }
  throw std::invalid_argument("minilvlm emu: unknown GPU profile '" + name + "'; known: A100, H100 (or \"\" for none)");
}

const GpuProfile* current_gpu() { return g_gpu.load(); }

int resident_blocks(const GpuProfile& gpu, int threads, size_t smem) {
  const int warps = (threads + 31) / 32;
  int blocks = gpu.max_blocks_per_sm;
  blocks = std::min(blocks, gpu.max_threads_per_sm / (warps * 32));
  if (smem > 0) blocks = std::min(blocks, static_cast<int>(gpu.smem_per_sm / (smem + 1024)));  // 1 KiB reserved per block
  return blocks;
}

}  // namespace minilvlm_emu
