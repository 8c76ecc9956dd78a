// capability.cpp: the run-time choice of the CPU kernels' SIMD path (see capability.h).
//   avx512_bf16  AVX-512F/BW/VL/DQ plus AVX512_BF16 (vdpbf16ps: bf16 pair dot products into fp32)
//   avx512       AVX-512F/BW/VL/DQ
//   avx2         AVX2 + FMA
//   default      the portable loops (also every non-x86 machine)
#include "cpu/capability.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>

#include "cpu/simd.h"

namespace minilvlm {

namespace {

Capability detect() {
#ifdef MINILVLM_HAVE_AVX512_PATH
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#ifdef MINILVLM_HAVE_AVX512BF16_PATH
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return Capability::kAvx512Bf16;
#endif
  if (avx512) return Capability::kAvx512;
  if (avx2) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

Capability parse_limit(const char* forced) {
  const std::string limit = forced ? forced : "avx512_bf16";
  if (limit == "avx512_bf16") return Capability::kAvx512Bf16;
  if (limit == "avx512") return Capability::kAvx512;
  if (limit == "avx2") return Capability::kAvx2;
  TORCH_CHECK(limit == "default", "MINILVLM_CPU_CAPABILITY must be avx512_bf16, avx512, avx2 or default, got '",
              limit, "'");
  return Capability::kDefault;
}

}  // namespace

Capability capability() {
  static const Capability cap = std::min(detect(), parse_limit(std::getenv("MINILVLM_CPU_CAPABILITY")));
  return cap;
}

std::string cpu_capability() {
  switch (capability()) {
    case Capability::kAvx512Bf16: return "avx512_bf16";
    case Capability::kAvx512: return "avx512";
    case Capability::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace minilvlm
