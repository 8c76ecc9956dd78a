// capability.h: which SIMD path the CPU kernels take, chosen once per process from cpuid
// (csrc/cpu/capability.cpp). The levels are ordered: a kernel with an AVX-512F path takes it for
// any level >= kAvx512. MINILVLM_CPU_CAPABILITY=avx512|avx2|default caps the choice, so tests can
// check every path on a machine that has them all. The ISA switches themselves are in cpu/simd.h.
#pragma once

#include <string>

namespace minilvlm {

enum class Capability { kDefault, kAvx2, kAvx512, kAvx512Bf16 };

Capability capability();
// The name of capability(): "avx512_bf16", "avx512", "avx2" or "default" (torch.ops.minilvlm.cpu_capability).
std::string cpu_capability();

// Whether the AVX-512F paths run (they need a CPU with AVX-512F/BW/VL/DQ, and no lower cap).
inline bool avx512_enabled() { return capability() >= Capability::kAvx512; }

}  // namespace minilvlm
